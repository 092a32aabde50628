"""TLS policy, built in one place, one reason per line (hypercorn's habit)."""

from __future__ import annotations

import ssl
from pathlib import Path

# Mozilla "intermediate": ECDHE with AEAD only for TLS 1.2; TLS 1.3 suites are
# all AEAD and stay at OpenSSL's defaults.
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


def server_context(cert: Path, key: Path, trust_bundle: Path) -> ssl.SSLContext:
    """The data-plane server context: mutual TLS is mandatory."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # issue 2: TLS 1.2+
    ctx.set_ciphers(TLS12_CIPHERS)  # no CBC, no RSA key exchange, no SHA-1 MACs
    ctx.options |= ssl.OP_NO_COMPRESSION  # CRIME
    ctx.options |= ssl.OP_NO_RENEGOTIATION  # client-initiated renegotiation DoS
    ctx.options |= ssl.OP_SINGLE_ECDH_USE
    ctx.verify_mode = ssl.CERT_REQUIRED  # SECURITY: no certificate, no connection
    ctx.load_verify_locations(cafile=str(trust_bundle))  # only our CA(s) are trusted
    ctx.load_cert_chain(str(cert), str(key))
    # Server-side verification uses OpenSSL's "SSL client" purpose, so a
    # certificate without EKU clientAuth is refused in the handshake.
    return ctx


def upstream_context(ca: Path | None, cert: Path | None = None, key: Path | None = None
                     ) -> ssl.SSLContext:
    """Client context for the gateway's calls to a shared system."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))  # upstream mTLS (issue 4)
    return ctx


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None
                   ) -> ssl.SSLContext:
    """A partner's client context (tests, tools): trusts ``ca``, presents a cert."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx
