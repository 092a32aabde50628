"""A fake upstream transport for the data-plane tests (httpx's
``MockTransport`` idea): it answers from a function and records what it was
sent, so the pipeline is tested without a shared system. Everything else the
pipeline uses is real."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.config import Upstream
from gateway.core.catalog import UPSTREAMS
from gateway.upstream import UpstreamResponse


@dataclass(frozen=True)
class Sent:
    upstream: str
    method: str
    target: str
    headers: dict[str, str]
    body: bytes | None


Answer = Callable[[Sent], UpstreamResponse]


def json_answer(doc: Any, status: int = 200) -> UpstreamResponse:
    return UpstreamResponse(status, "application/json",
                            (("Content-Type", "application/json"),), json.dumps(doc).encode())


@dataclass
class FakeUpstream:
    """Implements :class:`gateway.upstream.UpstreamTransport`."""

    answer: Answer
    sent: list[Sent] = field(default_factory=list)
    upstreams: Mapping[str, Upstream] = field(default_factory=lambda: {
        name: Upstream(name, "https://127.0.0.1:9") for name in UPSTREAMS})

    async def call(self, upstream: str, method: str, target: str, headers: Mapping[str, str],
                   body: bytes | None) -> UpstreamResponse:
        sent = Sent(upstream, method, target, dict(headers), body)
        self.sent.append(sent)
        return self.answer(sent)  # may raise UpstreamFailed, as the real pool does
