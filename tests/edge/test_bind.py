"""A listener that cannot bind says which one and where, in words a person
can act on (gateway.edge.bind; the CLI prints the line and exits 2)."""

from __future__ import annotations

import socket

import pytest

from gateway.edge import bind
from gateway.errors import ConfigError, ListenerUnavailable


def test_a_busy_port_names_the_listener_and_the_address() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ListenerUnavailable) as caught:
            bind("127.0.0.1", port, listener="ops plane")
    assert str(caught.value) == f"ops plane: cannot listen on 127.0.0.1:{port}: address in use"
    assert isinstance(caught.value, ConfigError)  # exit 2, like a configuration error


def test_an_address_of_another_host_is_named_too() -> None:
    # TEST-NET-1 (RFC 5737): never an address of this host.
    with pytest.raises(ListenerUnavailable, match=r"^admin plane: cannot listen on "
                       r"192\.0\.2\.1:8444: address not available on this host$"):
        bind("192.0.2.1", 8444, listener="admin plane")
    with pytest.raises(ListenerUnavailable, match=r"cannot listen on \[2001:db8::1\]:8443"):
        bind("2001:db8::1", 8443, listener="data plane")


def test_a_free_port_is_listening() -> None:
    sock = bind("127.0.0.1", 0, listener="data plane")
    with sock, socket.create_connection(sock.getsockname(), timeout=5):
        pass
