"""Counting failed TLS handshakes by reason.

The listeners build the event loop's own TLS protocol with a handshake
waiter of theirs (``gateway.edge._listeners``), so a failed handshake's
OpenSSL error reaches our code on any event loop (asyncio and uvloop alike)
and is reported here, classified, to the observer of the listener's context.
(Before, a wrapper around asyncio's private ``SSLProtocol`` method did this,
which uvloop's own TLS never calls.)
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Callable

Observer = Callable[[str], None]

_observers: dict[int, Observer] = {}
_lock = threading.Lock()

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


def report(context: ssl.SSLContext, exc: BaseException) -> None:
    """A handshake on a listener of ``context`` failed with ``exc``."""
    observer = _observers.get(id(context))
    if observer is not None:
        with contextlib.suppress(Exception):  # counting must never break TLS
            observer(classify(exc))


def observe(context: ssl.SSLContext, observer: Observer) -> None:
    """Report failed handshakes of listeners created with ``context``."""
    with _lock:
        _observers[id(context)] = observer


def forget(context: ssl.SSLContext) -> None:
    with _lock:
        _observers.pop(id(context), None)
