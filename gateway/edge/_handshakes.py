"""Counting failed TLS handshakes by reason.

asyncio completes server-side TLS handshakes itself and, outside debug mode,
drops the error of a failed one without a trace: the application protocol is
never told. The only place that sees the OpenSSL error is
``asyncio.sslproto.SSLProtocol._on_handshake_complete``. We wrap it once,
call the original unchanged, and report failures on contexts that registered
an observer. This leans on a private asyncio method: ``test_handshakes.py``
(tests/e2e/test_tls.py) fails if a Python upgrade moves it.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from asyncio import sslproto
from collections.abc import Callable
from typing import Any

Observer = Callable[[str], None]

_observers: dict[int, Observer] = {}
_lock = threading.Lock()
_installed = False

# X509_V_ERR_* codes (OpenSSL x509_vfy.h) -> metric reason.
_VERIFY_REASONS = {
    9: "not-yet-valid",
    10: "expired",
    2: "unknown-ca",
    18: "unknown-ca",  # self-signed leaf
    19: "unknown-ca",  # self-signed in chain
    20: "unknown-ca",
    21: "unknown-ca",
    23: "revoked",
    3: "crl-unavailable",
    12: "crl-unavailable",
    26: "wrong-purpose",  # e.g. a server certificate offered as a client certificate
}


def classify(exc: BaseException) -> str:
    """A bounded reason for a failed handshake."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _VERIFY_REASONS.get(exc.verify_code, "verify-failed")
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or "").upper()
        if "CERTIFICATE_REQUIRED" in reason or "DID_NOT_RETURN_A_CERTIFICATE" in reason:
            return "no-certificate"
        if "CERTIFICATE_VERIFY_FAILED" in reason:
            return "verify-failed"
        if "VERSION" in reason or "PROTOCOL" in reason:
            return "protocol-version"
        if "CIPHER" in reason:
            return "no-shared-cipher"
        if "HTTP_REQUEST" in reason or "WRONG_VERSION_NUMBER" in reason:
            return "not-tls"
        return "tls-error"
    if isinstance(exc, ConnectionError | TimeoutError):
        return "aborted"
    return "other"


def _install() -> None:
    global _installed
    original = sslproto.SSLProtocol._on_handshake_complete

    def observed(self: Any, handshake_exc: BaseException | None) -> None:
        if handshake_exc is not None:
            observer = _observers.get(id(getattr(self, "_sslcontext", None)))
            if observer is not None:
                with contextlib.suppress(Exception):  # counting must never break TLS
                    observer(classify(handshake_exc))
        original(self, handshake_exc)

    sslproto.SSLProtocol._on_handshake_complete = observed  # type: ignore[method-assign]
    _installed = True


def observe(context: ssl.SSLContext, observer: Observer) -> None:
    """Report failed handshakes of listeners created with ``context``."""
    with _lock:
        if not _installed:
            _install()
        _observers[id(context)] = observer


def forget(context: ssl.SSLContext) -> None:
    with _lock:
        _observers.pop(id(context), None)
