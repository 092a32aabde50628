"""The TLS read buffer tune (gateway/tls/_buffers.py) leans on a private detail
of asyncio: these tests fail if a Python upgrade moves it, and show on a real
TLS connection over 127.0.0.1 that the buffer is the gateway's size."""

from __future__ import annotations

import asyncio
import inspect
from asyncio import sslproto
from pathlib import Path

import pytest

from gateway.demo._devpki import ensure_dev_pki
from gateway.demo._stack import TRUST_DOMAIN
from gateway.tenants import load_tenants
from gateway.tls import _buffers as tlsbuffers
from gateway.tls._policy import client_context, server_context

REPO = Path(__file__).resolve().parents[2]


def test_asyncio_still_sizes_its_buffer_from_the_class_attribute() -> None:
    source = inspect.getsource(sslproto.SSLProtocol.__init__)
    assert "bytearray(self.max_size)" in source
    assert isinstance(sslproto.SSLProtocol.max_size, int)


def test_install_refuses_a_buffer_smaller_than_a_record() -> None:
    with pytest.raises(ValueError, match="16 KiB"):
        tlsbuffers.install(8 * 1024)


async def test_a_real_tls_connection_gets_the_small_buffer(tmp_path: Path) -> None:
    pki = ensure_dev_pki(tmp_path / "certs", load_tenants(REPO / "tenants"), TRUST_DOMAIN)
    tlsbuffers.install()
    assert tlsbuffers.installed_size() == 32 * 1024
    server_ctx = server_context(pki.server_cert, pki.server_key, pki.ca_cert)
    seen: list[int] = []

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        proto = writer.transport._ssl_protocol  # type: ignore[attr-defined]
        seen.append(len(proto._ssl_buffer))
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        ctx = client_context(pki.ca_cert, pki.client_cert("ores", "api"),
                             pki.client_key("ores", "api"))
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                       server_hostname="localhost")
        assert await reader.read() == b"ok"
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    assert seen == [32 * 1024]
