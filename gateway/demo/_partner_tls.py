"""TLS of the demo's partners (the simulated shared systems, the tenants'
receivers, the HES as a pusher) that follows the files it was built from.

A real partner is told of a new CA or a new gateway certificate and loads
the new trust bundle; the demo's partners do it themselves. Before each use
(a push, a handshake) the files' inode, mtime and size are compared with
what the context was built from, and a changed file builds a new context.
Verification is never loosened: a file caught half-written (a certificate
that does not match its key yet) keeps the last good context, and the next
use tries again.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

from gateway.tls import load_chain_from_pem

log = logging.getLogger("gateway.demo")

_Stamp = tuple[tuple[int, int, int] | None, ...]


class FollowedTls:
    """An ``SSLContext`` rebuilt by ``build`` whenever one of ``paths`` changes."""

    def __init__(self, build: Callable[[], ssl.SSLContext], *paths: Path) -> None:
        self._build = build
        self._paths = paths
        self._lock = threading.Lock()
        self._stamp = self._stamps()
        self._context = build()

    def _stamps(self) -> _Stamp:
        out: list[tuple[int, int, int] | None] = []
        for path in self._paths:
            try:
                st = os.stat(path)
            except OSError:
                out.append(None)
            else:
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(out)

    @property
    def context(self) -> ssl.SSLContext:
        """The context for the next use, rebuilt first if a file changed."""
        stamp = self._stamps()
        if stamp == self._stamp:
            return self._context
        with self._lock:
            if stamp != self._stamp:
                try:
                    context = self._build()
                except (OSError, ssl.SSLError, ValueError) as exc:
                    # Caught mid-rotation: keep the last good one, try again next time.
                    log.warning("TLS files changed but cannot be loaded yet (%s); keeping "
                                "the previous context", exc)
                    return self._context
                # Stamped before the build: a change during it is seen next time.
                self._context, self._stamp = context, stamp
        return self._context

    def server_context(self) -> ssl.SSLContext:
        """A listening context that switches every new handshake to the current
        context (OpenSSL runs the servername callback for every ClientHello,
        with or without SNI): certificate and trust anchors come from the
        current one; verify mode and options from this base, built the same
        way. Connections already open keep theirs."""
        base = self._build()

        def switch(conn: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
            conn.context = self.context

        base.sni_callback = switch
        return base


def client_tls(ca: Path, cert: Path | None = None, key: Path | None = None) -> FollowedTls:
    """A partner's client: trusts the bundle ``ca`` as it is now, presents ``cert``."""

    def build() -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
        if cert is not None and key is not None:
            ctx.load_cert_chain(str(cert), str(key))
        return ctx

    return FollowedTls(build, *(p for p in (ca, cert, key) if p is not None))


def server_tls(cert: Path, key: Path, *, clients_ca: Path | None = None,
               require_client_cert: bool = True) -> FollowedTls:
    """A partner's server certificate; with ``clients_ca``, client certificates
    are verified against that bundle as it is now (required, or optional when
    the application checks per request)."""

    # Only the trust bundle is followed: the partner keeps serving the
    # certificate it started with (its own identity, still trusted by the
    # gateway during a CA overlap), so the gateway's clients never meet a
    # certificate from a CA they have not loaded yet.
    cert_pem, key_pem = cert.read_bytes(), key.read_bytes()

    def build() -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        load_chain_from_pem(ctx, cert_pem, key_pem)
        if clients_ca is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
            ctx.load_verify_locations(cafile=str(clients_ca))
        return ctx

    return FollowedTls(build, *((clients_ca,) if clients_ca is not None else ()))
