"""The TLS read buffer of every asyncio TLS connection.

CPython's ``asyncio.sslproto.SSLProtocol`` allocates a zero-filled
``bytearray(max_size)`` per connection, with ``max_size = 256 * 1024`` as a
class attribute, and reads at most that much plaintext per call. At the
edge limit of 10,000 connections that is 2.5 GiB of buffers alone (nginx
spends ~35 KiB per idle connection in total). Two full TLS records (32 KiB)
are enough for one read; a larger body is read in more calls.

This sets the class attribute once, for the gateway process (server and
client connections alike). It leans on a private asyncio detail, like
``gateway.edge._handshakes``: tests/tls/test_buffers.py fails if a Python upgrade
moves it, and ``install`` refuses to run when the attribute is gone.
"""

from __future__ import annotations

from asyncio import sslproto

__all__ = ["TLS_READ_BUFFER", "install", "installed_size"]

TLS_READ_BUFFER = 32 * 1024  # two TLS records of 16 KiB


def install(size: int = TLS_READ_BUFFER) -> None:
    if size < 16 * 1024:
        raise ValueError("the TLS read buffer must hold at least one full TLS record (16 KiB)")
    current = getattr(sslproto.SSLProtocol, "max_size", None)
    if not isinstance(current, int):
        raise RuntimeError("asyncio.sslproto.SSLProtocol.max_size is gone: this Python's "
                           "asyncio changed; review gateway/tls/_buffers.py")
    sslproto.SSLProtocol.max_size = size


def installed_size() -> int:
    size: int = sslproto.SSLProtocol.max_size
    return size
