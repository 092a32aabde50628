"""TLS, in both directions: the policy every context is built from (one
function per context, a reason on each line), the server's TLS material
checked and hot-swapped without a restart, and the read buffer size of every
asyncio TLS connection.

The listeners (:mod:`gateway.edge`), the upstream client
(:mod:`gateway.upstream`), the credential lifecycle (:mod:`gateway.pki`) and
the admin CLI build their contexts here. May import: :mod:`gateway.files`
and the standard library and ``cryptography`` only; no aiohttp.
"""

from __future__ import annotations

from gateway.tls._buffers import install as install_read_buffer
from gateway.tls._policy import (
    client_context,
    load_chain_from_pem,
    server_context,
    server_policy_context,
    upstream_context,
)
from gateway.tls._reload import ServerTls, TlsMaterial, TlsMaterialError, check_material

__all__ = [
    "ServerTls",
    "TlsMaterial",
    "TlsMaterialError",
    "check_material",
    "client_context",
    "install_read_buffer",
    "load_chain_from_pem",
    "server_context",
    "server_policy_context",
    "upstream_context",
]
