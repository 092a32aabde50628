"""Header hygiene between the caller and the upstream.

The gateway forwards an *allow-list* of end-to-end request headers and
nothing else, so hop-by-hop headers (RFC 9110 §7.6.1), headers named in
``Connection``, and every header a caller could use to claim an identity
(``X-Tenant*``, ``X-Forwarded-*``, ``Forwarded``, ``X-Forwarded-Client-Cert``,
``Authorization`` ...) never reach an upstream. The only identity an upstream
sees is the gateway's signed assertion.

Header names containing ``_`` are refused outright: many upstream stacks
(CGI/WSGI) fold ``_`` and ``-`` together, so ``X_Tenant`` could pass as
``X-Tenant`` behind the gateway.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from gateway.core.rejected import Rejected

# End-to-end headers an upstream may need. Everything else is dropped.
FORWARDED = frozenset(
    {
        "accept",
        "accept-language",
        "content-type",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
        "idempotency-key",
        "user-agent",
        "x-request-id",
        "x-purpose",
    }
)
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_IDENTITY_PREFIXES = (
    "x-tenant",
    "x-forwarded-",
    "x-principal",
    "x-client-",
    "x-ssl-",
    "x-gateway-",
    "x-real-ip",
)
_IDENTITY_NAMES = frozenset(
    {"forwarded", "authorization", "cookie", "x-forwarded-client-cert", "x-user", "x-remote-user"}
)

# Response headers passed back from the upstream to the caller.
RESPONSE_FORWARDED = frozenset(
    {"content-language", "etag", "last-modified", "cache-control", "retry-after", "location"}
)


class HeaderRejected(Rejected):
    """A request header the gateway will not forward or interpret (400)."""


class CleanHeaders(NamedTuple):  # built per request: a tuple is cheaper
    forward: dict[str, str]
    # Names of identity-like headers the caller sent and the gateway dropped.
    dropped_identity: tuple[str, ...]


def is_identity_header(lname: str) -> bool:
    return lname in _IDENTITY_NAMES or lname.startswith(_IDENTITY_PREFIXES)


def clean_request_headers(headers: Iterable[tuple[str, str]]) -> CleanHeaders:
    forward: dict[str, str] = {}
    dropped: list[str] = []
    for name, value in headers:
        lname = name.lower()
        if "_" in lname:
            # SECURITY: X_Tenant == X-Tenant behind a CGI-style upstream.
            raise HeaderRejected("header-name-underscore")
        if lname in FORWARDED:
            if lname in forward:
                # Repeated end-to-end headers are not merged: ambiguous.
                raise HeaderRejected("header-repeated")
            forward[lname] = value
        elif is_identity_header(lname):
            dropped.append(lname)
    return CleanHeaders(forward, tuple(dropped))


def response_headers(headers: Iterable[tuple[str, str]],
                     label_name: str) -> tuple[dict[str, str], list[str]]:
    """In one pass over an upstream's answer headers: those passed back to
    the caller (``RESPONSE_FORWARDED``, as the upstream spelled them), and
    every value of the field ``label_name`` (lower case), in order. A field
    name in any case is the same field (RFC 9110 §5.1)."""
    forward: dict[str, str] = {}
    labels: list[str] = []
    for name, value in headers:
        lname = name.lower()
        if lname in RESPONSE_FORWARDED:
            forward[name] = value
        elif lname == label_name:
            labels.append(value)
    return forward, labels
