"""Calls to the shared systems: a keep-alive HTTP/1.1 client of its own
(strict response parser, one write per request), a connection pool per
upstream, timeouts, a response size cap, circuit breakers and health probes.
Foreign exceptions are translated here, once, into
:class:`~gateway.errors.UpstreamFailed`.

May import: :mod:`gateway.edge` (the client TLS context), :mod:`gateway.config`,
:mod:`gateway.metrics`, :mod:`gateway.errors`.
"""

from __future__ import annotations

from gateway.upstream._pool import UpstreamPool, UpstreamResponse, UpstreamTransport

__all__ = [
    "UpstreamPool",
    "UpstreamResponse",
    "UpstreamTransport",
]
