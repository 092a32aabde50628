"""Calls to the shared systems: one pooled keep-alive client per upstream,
timeouts, response size cap, health probes. Foreign exceptions are
translated once, here, into :class:`UpstreamFailed`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from gateway.config import Upstream
from gateway.errors import UpstreamFailed
from gateway.metrics import GatewayMetrics
from gateway.tls import upstream_context

log = logging.getLogger("gateway.upstream")


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
        self._health_task: asyncio.Task[None] | None = None

    async def start(self, health_interval_s: float) -> None:
        for name, up in self.upstreams.items():
            ssl_ctx = upstream_context(up.ca) if up.url.startswith("https://") else False
            connector = aiohttp.TCPConnector(limit=up.pool_size, ssl=ssl_ctx,
                                             keepalive_timeout=30, enable_cleanup_closed=False)
            self._sessions[name] = aiohttp.ClientSession(
                base_url=up.url, connector=connector, auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=up.timeout_s,
                                              sock_connect=up.connect_timeout_s),
                skip_auto_headers=("User-Agent", "Accept-Encoding"))
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
        session = self._sessions[upstream]
        limit = self.upstreams[upstream].max_response_bytes
        try:
            async with session.request(method, target, headers=headers, data=body,
                                       allow_redirects=False) as resp:
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
            raise UpstreamFailed(502, "upstream-unreachable") from exc

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
