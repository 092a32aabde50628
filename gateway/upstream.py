"""Calls to the shared systems: one pooled keep-alive client per upstream,
timeouts, response size cap, health probes. Foreign exceptions are
translated once, here, into :class:`UpstreamFailed`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp

from gateway.config import Upstream
from gateway.errors import UpstreamFailed
from gateway.metrics import GatewayMetrics
from gateway.tls import upstream_context

log = logging.getLogger("gateway.upstream")


IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})


class _Retryable(Exception):
    """The connection failed before any answer (internal to the pool)."""


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

    def success(self) -> None:
        self.state, self.failures = "closed", 0

    def failure(self, now: float) -> bool:
        """Count a failure; True when this one opened the circuit."""
        self.failures += 1
        if self.state == "half-open" or self.failures >= self.threshold:
            opened = self.state != "open"
            self.state, self.opened_at = "open", now
            return opened
        return False


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    content_type: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


class UpstreamPool:
    def __init__(self, upstreams: Mapping[str, Upstream], metrics: GatewayMetrics) -> None:
        self.upstreams = dict(upstreams)
        self.metrics = metrics
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self.up: dict[str, bool] = {name: False for name in upstreams}
        self.breakers = {name: Breaker(up.breaker_failures, up.breaker_open_s)
                         for name, up in upstreams.items()}
        # The client certificate an upstream takes as the gateway's credential
        # (set by the vault side before start).
        self.client_identity: Callable[[str], tuple[bytes, bytes] | None] = lambda name: None
        self._health_task: asyncio.Task[None] | None = None

    def _session(self, name: str) -> aiohttp.ClientSession:
        up = self.upstreams[name]
        ssl_ctx: ssl.SSLContext | bool = False
        if up.url.startswith("https://"):
            ssl_ctx = upstream_context(up.ca, self.client_identity(name))
        connector = aiohttp.TCPConnector(limit=up.pool_size, ssl=ssl_ctx,
                                         keepalive_timeout=30, enable_cleanup_closed=False)
        return aiohttp.ClientSession(
            base_url=up.url, connector=connector, auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=up.timeout_s, sock_connect=up.connect_timeout_s),
            skip_auto_headers=("User-Agent", "Accept-Encoding"))

    async def renew_session(self, name: str, grace_s: float) -> None:
        """New connections with a new client identity; requests in flight on
        the old ones finish within ``grace_s``."""
        old = self._sessions[name]
        self._sessions[name] = self._session(name)
        await asyncio.sleep(grace_s)
        await old.close()

    async def start(self, health_interval_s: float) -> None:
        for name in self.upstreams:
            self._sessions[name] = self._session(name)
        await self.probe_all()
        self._health_task = asyncio.create_task(self._health_loop(health_interval_s))

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        for session in self._sessions.values():
            await session.close()

    async def call(self, upstream: str, method: str, target: str, headers: Mapping[str, str],
                   body: bytes | None) -> UpstreamResponse:
        """One call, through the upstream's circuit breaker. A connection that
        fails before any answer is retried once, for idempotent methods only."""
        breaker = self.breakers[upstream]
        if not breaker.allow(time.monotonic()):
            self.metrics.upstream_errors.labels(upstream, "circuit-open").inc()
            raise UpstreamFailed(503, "upstream-circuit-open")  # fail fast, no pile-up
        attempts = 2 if method in IDEMPOTENT else 1
        for attempt in range(1, attempts + 1):
            try:
                response = await self._call_once(upstream, method, target, headers, body)
            except _Retryable as exc:
                if attempt < attempts:
                    self.metrics.upstream_errors.labels(upstream, "retried").inc()
                    continue
                self._failed(upstream, breaker)
                raise UpstreamFailed(502, "upstream-unreachable") from exc.__cause__
            except UpstreamFailed as exc:
                if exc.status >= 502:
                    self._failed(upstream, breaker)
                raise
            if response.status >= 500:
                self._failed(upstream, breaker)
            else:
                breaker.success()
                self.metrics.upstream_circuit_open.labels(upstream).set(0)
            return response
        raise AssertionError("unreachable")

    def _failed(self, upstream: str, breaker: Breaker) -> None:
        if breaker.failure(time.monotonic()):
            log.warning("circuit to upstream %s opened", upstream)
            self.metrics.upstream_circuit_open.labels(upstream).set(1)

    async def _call_once(self, upstream: str, method: str, target: str,
                         headers: Mapping[str, str], body: bytes | None) -> UpstreamResponse:
        session = self._sessions[upstream]
        limit = self.upstreams[upstream].max_response_bytes
        got_answer = False
        try:
            async with session.request(method, target, headers=headers, data=body,
                                       allow_redirects=False) as resp:
                got_answer = True
                if resp.content_length is not None and resp.content_length > limit:
                    raise UpstreamFailed(502, "upstream-response-too-large")
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_any():
                    size += len(chunk)
                    if size > limit:
                        raise UpstreamFailed(502, "upstream-response-too-large")
                    chunks.append(chunk)
                return UpstreamResponse(resp.status, resp.content_type,
                                        tuple(resp.headers.items()), b"".join(chunks))
        except UpstreamFailed:
            self.metrics.upstream_errors.labels(upstream, "too-large").inc()
            raise
        except TimeoutError as exc:
            self.metrics.upstream_errors.labels(upstream, "timeout").inc()
            raise UpstreamFailed(504, "upstream-timeout") from exc
        except aiohttp.ClientError as exc:
            self.metrics.upstream_errors.labels(upstream, "connection").inc()
            if not got_answer:
                # Nothing came back: safe to retry an idempotent request.
                raise _Retryable() from exc
            # A body cut off mid-way: never a clean answer.
            raise UpstreamFailed(502, "upstream-reset") from exc

    async def admin_call(self, upstream: str, path: str, body: dict[str, object],
                         authorization: str) -> dict[str, object]:
        """A call to the shared system's own admin API (credential rotation)."""
        try:
            async with self._sessions[upstream].post(
                    path, json=body, headers={"Authorization": authorization}) as resp:
                doc = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise UpstreamFailed(502, "upstream-admin-unreachable") from exc
        if status >= 300 or not isinstance(doc, dict):
            raise UpstreamFailed(502, f"upstream-admin-{status}")
        return doc

    async def probe(self, name: str) -> bool:
        try:
            async with self._sessions[name].get(
                    "/healthz", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                ok = resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        if ok != self.up.get(name):
            log.info("upstream %s is %s", name, "up" if ok else "down")
        self.up[name] = ok
        self.metrics.upstream_up.labels(name).set(1 if ok else 0)
        return ok

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(name) for name in self._sessions))

    async def _health_loop(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.probe_all()
