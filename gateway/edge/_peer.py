"""A connection's client certificate, read once (at connect) and shared by
the connection book (the tenant's connection cap) and the caller resolver
(who is asking, per request): one TLS connection carries one certificate."""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass
from typing import Any

from gateway.core.identity import parse_principal_uri, uri_sans


@dataclass(frozen=True, slots=True)
class Peer:
    """What the verified client certificate of one connection says."""

    principal: tuple[str, str, str] | None  # tenant, kind, name; None: see refusal
    refusal: str | None  # why it names no principal of this trust domain
    serial: str = ""
    fingerprint: str = ""  # SHA-256 of the DER certificate (RFC 8705 x5t#S256)

    @property
    def tenant(self) -> str:
        return self.principal[0] if self.principal is not None else ""


def read_peer(transport: Any, trust_domain: str) -> Peer:
    ssl_object = transport.get_extra_info("ssl_object")
    peercert = transport.get_extra_info("peercert")
    if ssl_object is None or not peercert:
        return Peer(None, "no-client-certificate")
    uris = uri_sans(peercert)
    if len(uris) != 1:
        return Peer(None, "certificate-without-single-uri-san")
    parsed = parse_principal_uri(uris[0], trust_domain)
    if parsed is None:
        return Peer(None, "foreign-principal-uri")
    der = ssl_object.getpeercert(binary_form=True) or b""
    serial = format(int(str(peercert.get("serialNumber", "0")), 16), "X")
    return Peer(parsed, None, serial, hashlib.sha256(der).hexdigest())


class Peers:
    """Each connection's :class:`Peer`, read at most once per transport."""

    def __init__(self, trust_domain: str) -> None:
        self.trust_domain = trust_domain
        self._by_transport: weakref.WeakKeyDictionary[Any, Peer] = weakref.WeakKeyDictionary()
        self.reads = 0  # certificates parsed (tests: once per connection)

    def of(self, transport: Any) -> Peer:
        peer = self._by_transport.get(transport)
        if peer is None:
            peer = read_peer(transport, self.trust_domain)
            self.reads += 1
            self._by_transport[transport] = peer
        return peer
