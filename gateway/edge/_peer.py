"""A connection's client certificate, read once (at connect) and shared by
the connection book (the tenant's connection cap) and the caller resolver
(who is asking, per request): one TLS connection carries one certificate."""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, Literal, TypeVar, overload

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


T = TypeVar("T")


class PerConnection(Generic[T]):
    """A value kept for as long as one connection lives, and gone with it.

    It sits on the connection's protocol object (every event loop hands a
    transport its protocol), not in a map keyed by the transport: uvloop's
    transports cannot be weakly referenced, and a strong map would keep
    closed connections alive. A slotted protocol offers a ``gw_kept`` slot
    (the lean server's connection: made a dict by the first keeper), any
    other its instance dict (aiohttp's request handler); a protocol that
    takes neither falls back to a weak map of its transport (asyncio's
    allow that). :meth:`clear` makes every connection's value stale at once."""

    def __init__(self, name: str) -> None:
        self._attr = f"_gw_{name}_{id(self):x}"  # this keeper's key on a connection
        self._generation = 0
        self._fallback: weakref.WeakKeyDictionary[Any, tuple[int, T]] = (
            weakref.WeakKeyDictionary())

    def get(self, transport: Any) -> T | None:
        store = _store(transport, make=False)
        kept: tuple[int, T] | None = (store.get(self._attr) if store is not None
                                      else self._fallback.get(transport))
        if kept is None or kept[0] != self._generation:
            return None
        return kept[1]

    def set(self, transport: Any, value: T) -> None:
        store = _store(transport, make=True)
        if store is not None:
            store[self._attr] = (self._generation, value)
        else:
            self._fallback[transport] = (self._generation, value)

    def clear(self) -> None:
        """Every connection reads its value again."""
        self._generation += 1
        self._fallback = weakref.WeakKeyDictionary()


_NOTHING_KEPT: Mapping[str, Any] = MappingProxyType({})  # a gw_kept slot not made yet


@overload
def _store(transport: Any, *, make: Literal[True]) -> dict[str, Any] | None: ...
@overload
def _store(transport: Any, *, make: Literal[False]) -> Mapping[str, Any] | None: ...
def _store(transport: Any, *, make: bool) -> Mapping[str, Any] | None:
    """Where the connection's protocol keeps the values: its ``gw_kept``
    slot, else its instance dict; None when it takes neither."""
    get_protocol = getattr(transport, "get_protocol", None)
    protocol: Any = get_protocol() if get_protocol is not None else None
    try:
        kept: dict[str, Any] | None = protocol.gw_kept
    except AttributeError:
        return protocol.__dict__ if hasattr(protocol, "__dict__") else None
    if kept is None:
        if not make:
            return _NOTHING_KEPT
        kept = protocol.gw_kept = {}
    return kept


class Peers:
    """Each connection's :class:`Peer`, read at most once per connection."""

    def __init__(self, trust_domain: str) -> None:
        self.trust_domain = trust_domain
        self._by_connection: PerConnection[Peer] = PerConnection("peer")
        self.reads = 0  # certificates parsed (tests: once per connection)

    def of(self, transport: Any) -> Peer:
        peer = self._by_connection.get(transport)
        if peer is None:
            peer = read_peer(transport, self.trust_domain)
            self.reads += 1
            self._by_connection.set(transport, peer)
        return peer
