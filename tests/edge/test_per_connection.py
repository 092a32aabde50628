"""What the edge keeps per connection (the peer certificate's reading, the
resolved caller) lives as long as the connection and no longer, on any
event loop: on the connection's protocol where it takes attributes, else in
a weak map of the transport."""

from __future__ import annotations

import gc
from typing import Any

from gateway.edge import PerConnection


class Protocol:
    """A connection's protocol that takes attributes (the listeners' handler)."""


class Transport:
    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol

    def get_protocol(self) -> Any:
        return self._protocol


class SlottedProtocol:
    __slots__ = ()


class KeepingProtocol:
    """A slotted protocol with a slot for the edge's values (the lean server's)."""

    __slots__ = ("gw_kept",)

    def __init__(self) -> None:
        self.gw_kept: dict[str, object] | None = None


class PlainTransport:
    """A transport without a protocol that takes attributes (weakly referable)."""


def test_a_value_is_kept_on_the_connections_protocol() -> None:
    keeper: PerConnection[str] = PerConnection("caller")
    one, two = Transport(Protocol()), Transport(Protocol())
    assert keeper.get(one) is None
    keeper.set(one, "ores/service/api")
    assert keeper.get(one) == "ores/service/api" and keeper.get(two) is None
    other: PerConnection[str] = PerConnection("peer")  # keepers do not share a slot
    assert other.get(one) is None


def test_it_goes_with_the_connection() -> None:
    keeper: PerConnection[object] = PerConnection("caller")
    protocol = Protocol()
    keeper.set(Transport(protocol), object())
    assert len(vars(protocol)) == 1  # held by the protocol, not by the keeper
    slotted, plain = Transport(SlottedProtocol()), PlainTransport()
    keeper.set(slotted, "a")
    keeper.set(plain, "b")
    assert (keeper.get(slotted), keeper.get(plain)) == ("a", "b")  # the weak fallback
    del slotted, plain
    gc.collect()
    assert len(keeper._fallback) == 0


def test_clear_makes_every_connections_value_stale() -> None:
    keeper: PerConnection[str] = PerConnection("caller")
    conn, plain = Transport(Protocol()), PlainTransport()
    keeper.set(conn, "before")
    keeper.set(plain, "before")
    keeper.clear()  # new tenant declarations: resolve again
    assert keeper.get(conn) is None and keeper.get(plain) is None
    keeper.set(conn, "after")
    assert keeper.get(conn) == "after"


def test_a_slotted_connection_keeps_its_values_in_its_gw_kept_slot() -> None:
    keeper: PerConnection[str] = PerConnection("caller")
    other: PerConnection[str] = PerConnection("peer")
    protocol = KeepingProtocol()
    conn = Transport(protocol)
    assert keeper.get(conn) is None and protocol.gw_kept is None  # reading makes nothing
    keeper.set(conn, "ores/service/api")
    assert keeper.get(conn) == "ores/service/api" and other.get(conn) is None
    assert protocol.gw_kept is not None and len(protocol.gw_kept) == 1
    assert len(keeper._fallback) == 0  # on the connection, not in the keeper
    assert keeper.get(Transport(KeepingProtocol())) is None  # another connection's slot
    keeper.clear()
    assert keeper.get(conn) is None


def test_the_lean_servers_connection_has_no_instance_dict() -> None:
    """An idle data-plane connection's Python part stays small (bench/README,
    idle mTLS connections): the lean connection is slotted, and keeps the
    edge's values in its gw_kept slot."""
    from gateway.edge._lean import LeanConnection

    assert "__dict__" not in dir(LeanConnection) and "gw_kept" in LeanConnection.__slots__
