"""Edge limits of the mTLS listeners: the ``[limits]`` table of the config.

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

from dataclasses import dataclass
from typing import Any

KiB = 1024


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
        # pipeline's and every count over it is the same 431 (gateway.edge._listeners).
        return {"max_line_size": self.max_url_bytes, "max_field_size": self.max_header_bytes,
                "max_headers": self.max_headers + 2,
                "keepalive_timeout": self.keepalive_timeout_s}
