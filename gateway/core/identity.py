"""Map a client certificate's URI SAN to a principal (pure, no I/O).

``spiffe://<trust-domain>/tenant/<tenant>/<kind>/<name>``; anything else,
including another trust domain, maps to nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_SEGMENT = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def parse_principal_uri(uri: str, trust_domain: str) -> tuple[str, str, str] | None:
    """``(tenant, kind, name)`` named by ``uri`` in ``trust_domain``, else None."""
    prefix = f"spiffe://{trust_domain}/tenant/"
    if not uri.startswith(prefix):
        return None
    parts = uri[len(prefix):].split("/")
    if len(parts) != 3 or not all(_SEGMENT.fullmatch(p) for p in parts):
        return None
    tenant, kind, name = parts
    return tenant, kind, name


def uri_sans(peercert: dict[str, object]) -> list[str]:
    """The URI entries of ``ssl.SSLSocket.getpeercert()``'s subjectAltName."""
    san = peercert.get("subjectAltName", ())
    out: list[str] = []
    if isinstance(san, Iterable):
        for entry in san:
            if isinstance(entry, tuple) and len(entry) == 2 and entry[0] == "URI":
                out.append(str(entry[1]))
    return out
