"""Edge limits of the mTLS listeners (issue 8 item 1).

Defaults follow Envoy's and nginx's edge guidance:

==============================  =========  ==========================================
limit                           default    on breach
==============================  =========  ==========================================
request line                    8 KiB      414
one header                      8 KiB      431
header block                    64 KiB     431
header count                    100        431
body (per route)                1 MiB      413, counted as it arrives (chunked too)
header read (slowloris)         10 s       connection closed
body read, between chunks       30 s       408
TLS handshake                   10 s       connection closed
idle keep-alive                 15 s       connection closed
connections per listener        10,000     new connection closed at once
connections per tenant          1,000      new connection closed at once
requests in flight              512        503 + Retry-After (load shedding)
memory (RSS)                    1 GiB      503 + Retry-After until back under;
                                           new connections closed at once;
                                           /readyz 503 "shedding load: memory"
push body, per-record batch     16 MiB     413 ``payload-too-large`` naming the
  (no ``format``) or booking               limits; measured peak +186 MiB
push body, ``meter-days/v1``    16 MiB     413 likewise; measured peak +159 MiB
                                           (+261 for a many-day backlog)
large pushes in progress        1          503 + Retry-After (a push without
                                           Content-Length or over 1 MiB is large)
TLS read buffer per connection  32 KiB     (asyncio's default: 256 KiB, zero-filled)
JSON nesting (request bodies,   64         400 ``bad-request`` (a push, a request);
  pushes, upstream answers)                an upstream answer: 502
                                           (gateway.core.jsonlimits.MAX_DEPTH)
==============================  =========  ==========================================

aiohttp has no header-read timeout and no header-block cap; both are added
here around its request handler. ``self_check()`` refuses to start a
listener that would not require client certificates or apply these limits.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.core.identity import parse_principal_uri, uri_sans
from gateway.errors import ConfigError

KiB = 1024
# How stale the admission's RSS reading may be: at ~800 handshakes/s that
# admits at most ~40 connections (~3 MiB) past the budget before it is seen.
RSS_READ_EVERY_S = 0.05


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    max_request_line_bytes: int = 8 * KiB
    max_header_bytes: int = 8 * KiB
    max_header_block_bytes: int = 64 * KiB
    max_headers: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    handshake_timeout_s: float = 10.0
    keepalive_timeout_s: float = 15.0
    max_connections: int = 10_000
    max_connections_per_tenant: int = 1_000
    max_in_flight: int = 512  # requests being handled at once; beyond: 503 (shed load)
    memory_budget_mb: int = 1024  # RSS above it: new requests get 503 until it drops
    # D1 availability: a push is parsed whole, so its body is capped where its
    # peak stays within a quarter of the budget (bench/README.md, "Push
    # memory"), and one large push is handled at a time.
    max_push_records_mb: int = 16  # per-record batch (no `format`), portal booking
    max_push_meter_days_mb: int = 16  # `meter-days/v1` batch
    max_push_in_progress: int = 1  # large push bodies read or routed at once

    @property
    def max_url_bytes(self) -> int:
        # aiohttp limits the target, not the whole line: leave room for the
        # method and version, and keep the value distinct from the header
        # limit so a refusal can tell 414 from 431.
        return self.max_request_line_bytes - 16

    def server_kwargs(self) -> dict[str, Any]:
        # max_headers: aiohttp's parser counts too (128 by default, refused as
        # a bare 400). Set just above ours (its pure-Python parser counts the
        # request line and the blank line), so the exact count is the
        # pipeline's and every count over it is the same 431 (gateway.listeners).
        return {"max_line_size": self.max_url_bytes, "max_field_size": self.max_header_bytes,
                "max_headers": self.max_headers + 2,
                "keepalive_timeout": self.keepalive_timeout_s}


def self_check(context: ssl.SSLContext, limits: EdgeLimits) -> None:
    """Refuse to start a listener that would not be what it claims."""
    if context.verify_mode != ssl.CERT_REQUIRED:
        raise ConfigError("self-check: the listener does not require client certificates")
    if not context.get_ca_certs():
        raise ConfigError("self-check: the trust bundle is empty")
    if context.minimum_version < ssl.TLSVersion.TLSv1_2:
        raise ConfigError("self-check: TLS older than 1.2 is allowed")
    for name in ("max_request_line_bytes", "max_header_bytes", "max_header_block_bytes",
                 "max_headers", "header_timeout_s", "body_timeout_s", "handshake_timeout_s",
                 "keepalive_timeout_s", "max_connections", "max_connections_per_tenant",
                 "max_in_flight", "memory_budget_mb", "max_push_records_mb",
                 "max_push_meter_days_mb", "max_push_in_progress"):
        if not getattr(limits, name) > 0:
            raise ConfigError(f"self-check: limit {name} is not applied")


class ConnectionBook:
    """Open connections per listener and per tenant (noisy neighbours cannot
    take every socket)."""

    def __init__(self, limits: EdgeLimits, trust_domain: str, *,
                 rss: Callable[[], int] | None = None,
                 on_refused: Callable[[str], None] = lambda reason: None) -> None:
        self.limits = limits
        self.trust_domain = trust_domain
        self.total = 0
        self.per_tenant: Counter[str] = Counter()
        self.refused = 0
        self._rss = rss or rss_bytes
        self._budget = limits.memory_budget_mb * 1024 * 1024
        self._on_refused = on_refused
        self._over_budget = False
        self._rss_read_at = -RSS_READ_EVERY_S

    def tenant_of(self, transport: asyncio.BaseTransport) -> str:
        peercert = transport.get_extra_info("peercert") or {}
        uris = uri_sans(peercert)
        parsed = parse_principal_uri(uris[0], self.trust_domain) if len(uris) == 1 else None
        return parsed[0] if parsed else ""

    def admit(self, tenant: str) -> bool:
        """Count a new connection in, or say no: over the listener's or the
        tenant's cap, or with the process over its memory budget (an RSS
        read at most every 50 ms: memory stays bounded by the budget plus what
        the connections admitted meanwhile allocate)."""
        if self.total >= self.limits.max_connections:
            return self._refuse("connection-cap")
        if tenant and self.per_tenant[tenant] >= self.limits.max_connections_per_tenant:
            return self._refuse("tenant-connection-cap")
        if self._over():
            return self._refuse("memory-budget")
        self.total += 1
        if tenant:
            self.per_tenant[tenant] += 1
        return True

    def _over(self) -> bool:
        """RSS over the budget, read at most every RSS_READ_EVERY_S (reading
        /proc costs ~70 µs, 5 % of a handshake at full rate)."""
        now = time.monotonic()
        if now - self._rss_read_at >= RSS_READ_EVERY_S:
            self._rss_read_at = now
            self._over_budget = self._rss() > self._budget
        return self._over_budget

    def _refuse(self, reason: str) -> bool:
        self.refused += 1
        self._on_refused(reason)
        return False

    def release(self, tenant: str) -> None:
        self.total -= 1
        if tenant:
            self.per_tenant[tenant] -= 1
            if self.per_tenant[tenant] <= 0:
                del self.per_tenant[tenant]


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc)."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")
