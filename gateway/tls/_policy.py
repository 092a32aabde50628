"""TLS policy, built in one place, one reason per line (hypercorn's habit)."""

from __future__ import annotations

import _ssl
import ctypes
import functools
import logging
import os
import ssl
import sys
from pathlib import Path

# Mozilla "intermediate": ECDHE with AEAD only for TLS 1.2; TLS 1.3 suites are
# all AEAD and stay at OpenSSL's defaults (all three are in the profile).
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)

# Key-exchange groups, TLS 1.2 (ECDHE) and 1.3 alike: Mozilla intermediate's
# list, in preference order. OpenSSL 3's default also offers X448, P-521 and
# (TLS 1.3) the ffdhe groups, which the profile rejects (conformance/run.sh).
GROUPS = "X25519:P-256:P-384"
# Python 3.11's ssl can set only ONE group (set_ecdh_curve: SSL_CTX_set1_groups
# with one NID); SSLContext.set_groups() comes with Python 3.15. One group is
# not enough: X25519 alone breaks TLS 1.2 (OpenSSL 3 only serves an ECDSA
# certificate whose curve is among its own groups), P-256 alone sends nearly
# every TLS 1.3 client (X25519 as first key share) a HelloRetryRequest: a round
# trip more and a second servername callback (gateway.tls._reload) per handshake.
# So _set_groups_list() reaches OpenSSL directly; P-256 alone is the fallback.
FALLBACK_GROUP = "prime256v1"
_SSL_CTRL_SET_GROUPS_LIST = 92  # openssl/ssl.h: SSL_CTX_set1_groups_list() is this ctrl

log = logging.getLogger("gateway.tls")


@functools.cache
def _libssl() -> ctypes.CDLL | None:
    """The libssl the ssl module itself uses (not cryptography's own copy)."""
    try:
        lib = ctypes.CDLL(_ssl.__file__)  # dlsym also searches its libssl.so
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64  # OpenSSL 3: uint64_t
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long,
                                     ctypes.c_char_p]
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
    except (AttributeError, OSError):  # _ssl built in statically, or no such symbol
        return None
    return lib


def _set_groups_list(ctx: ssl.SSLContext, groups: str) -> bool:
    """SSL_CTX_set1_groups_list() on ``ctx``'s SSL_CTX; False if that cannot be done safely.

    SECURITY: this reads the SSL_CTX pointer out of CPython's PySSLContext
    (``PyObject_HEAD`` then ``SSL_CTX *ctx``, unchanged in 3.11-3.14) and
    checks it before use: the SSL_CTX found must report the very options the
    ssl module reports for ``ctx``. Anything unexpected returns False.
    """
    if sys.implementation.name != "cpython" or not (3, 11) <= sys.version_info[:2] <= (3, 14):
        return False  # a layout we have not read: do not guess
    lib = _libssl()
    if lib is None:
        return False
    # The first field after the object header, whatever the header's size
    # (object.__basicsize__ is sizeof(PyObject), larger on special builds).
    ssl_ctx = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not ssl_ctx or lib.SSL_CTX_get_options(ssl_ctx) != int(ctx.options):
        return False  # not the SSL_CTX we think it is
    return bool(lib.SSL_CTX_ctrl(ssl_ctx, _SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode()) == 1)


def set_groups(ctx: ssl.SSLContext) -> str:
    """Restrict ``ctx``'s key-exchange groups to GROUPS; return what was set.

    Call it after the options are set (the pointer check compares them).
    """
    setter = getattr(ctx, "set_groups", None)  # the public API, Python 3.15+
    if setter is not None:
        setter(GROUPS)
        return GROUPS
    if _set_groups_list(ctx, GROUPS):
        return GROUPS
    # Still within the profile; costs the HelloRetryRequest described above.
    log.warning("cannot set TLS groups %s on this Python; offering %s only",
                GROUPS, FALLBACK_GROUP)
    ctx.set_ecdh_curve(FALLBACK_GROUP)
    return FALLBACK_GROUP


def server_policy_context(check_crl: bool = False) -> ssl.SSLContext:
    """The TLS policy of every mTLS listener (data and admin plane), no material yet.

    Built in this one place; tlsreload builds every generation's context with it.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # DESIGN.md §2: TLS 1.2+ (no SSLv3, TLS 1.0/1.1)
    ctx.set_ciphers(TLS12_CIPHERS)  # no CBC, no RSA key exchange, no SHA-1 MACs, no DHE
    ctx.options |= ssl.OP_NO_COMPRESSION  # CRIME
    ctx.options |= ssl.OP_NO_RENEGOTIATION  # client-initiated renegotiation DoS
    ctx.options |= ssl.OP_SINGLE_ECDH_USE  # a fresh ECDHE key per handshake: forward secrecy
    # SECURITY: resumption skips client-certificate checks (see gateway.tls._reload).
    ctx.options |= ssl.OP_NO_TICKET  # no TLS 1.2 tickets (also Mozilla: forward secrecy)
    ctx.num_tickets = 0  # no TLS 1.3 tickets: TLS 1.3 never resumes
    set_groups(ctx)  # X25519, P-256, P-384 only: no X448, P-521, ffdhe (see GROUPS)
    ctx.verify_mode = ssl.CERT_REQUIRED  # SECURITY: no certificate, no connection
    if check_crl:
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF  # a leaf needs its CA's CRL
    # Server-side verification uses OpenSSL's "SSL client" purpose, so a
    # certificate without EKU clientAuth is refused in the handshake.
    return ctx


def server_context(cert: Path, key: Path, trust_bundle: Path) -> ssl.SSLContext:
    """A server context with mutual TLS mandatory, from files (no hot reload)."""
    ctx = server_policy_context()
    ctx.load_verify_locations(cafile=str(trust_bundle))  # only our CA(s) are trusted
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def upstream_context(ca: Path | None, identity: tuple[bytes, bytes] | None = None
                     ) -> ssl.SSLContext:
    """Client context for the gateway's calls to a shared system; with
    ``identity`` (certificate and key PEM, from the vault) it presents a
    client certificate: upstream mTLS as the gateway's credential."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if identity is not None:
        load_chain_from_pem(ctx, *identity)
    return ctx


def load_chain_from_pem(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """``load_cert_chain`` wants files: a private directory, gone at once."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gw-tls-") as tmp:  # mode 0700
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert.write_bytes(cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key_pem)
        ctx.load_cert_chain(str(cert), str(key))


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None
                   ) -> ssl.SSLContext:
    """A partner's client context (tests, tools): trusts ``ca``, presents a cert."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx
