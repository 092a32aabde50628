"""The edge: everything between a caller's TCP connection and a request the
data plane may look at.

Owns the TLS policy (one function per context, a reason per line), the
reloadable server TLS material, the TLS read buffer size, the handshake
accounting, the edge limits and the connection book, the listeners and the
HTTP servers they run (the data plane's lean one, aiohttp's), what a
request is past the edge (:class:`HttpRequest`) and what a data handler
answers (:class:`Answer`), and the mapping from a
verified certificate to a :class:`~gateway.core.model.Caller`.

May import: :mod:`gateway.core`, :mod:`gateway.errors`, :mod:`gateway.problem`,
:mod:`gateway.tenants`, :mod:`gateway.files`. It does not know the data plane:
a listener serves any :class:`DataHandler`.
"""

from __future__ import annotations

from gateway.edge._answer import Answer
from gateway.edge._handshakes import forget as forget_handshakes
from gateway.edge._handshakes import observe as observe_handshakes
from gateway.edge._identity import CallerResolver, CredentialRefused
from gateway.edge._limits import ConnectionBook, rss_bytes, self_check
from gateway.edge._listeners import (
    DataHandler,
    DataServer,
    GuardedAppRunner,
    OpenConnections,
    TlsSite,
    admin_refusal,
    bind,
    event_loop_name,
    headers_arrived,
)
from gateway.edge._peer import Peer, Peers, PerConnection
from gateway.edge._request import BodyReader, HttpRequest

__all__ = [
    "Answer",
    "BodyReader",
    "CallerResolver",
    "ConnectionBook",
    "CredentialRefused",
    "DataHandler",
    "DataServer",
    "GuardedAppRunner",
    "HttpRequest",
    "OpenConnections",
    "Peer",
    "Peers",
    "PerConnection",
    "TlsSite",
    "admin_refusal",
    "bind",
    "event_loop_name",
    "forget_handshakes",
    "headers_arrived",
    "observe_handshakes",
    "rss_bytes",
    "self_check",
]
