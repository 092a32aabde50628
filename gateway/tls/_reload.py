"""Reload the data plane's TLS material without a restart or a dropped connection.

The listener is given one *base* context, once. Its SNI callback, which
OpenSSL runs for every ClientHello (also when the client sends no SNI, as
Python and curl do for ``https://127.0.0.1``), switches the new connection to
the current context. Established connections keep the context they began
with. What the switch does, measured on CPython 3.11 / OpenSSL 3.0:

* taken from the *current* context: server certificate and key, trust store
  (anchors) and the CRLs in it;
* kept from the *base* context (copied into each connection when it is
  created): verify_mode, verify_flags (so ``VERIFY_CRL_CHECK_LEAF``),
  options, ciphers, protocol versions, session cache and tickets.

So every context is built by the same policy function, and the flags that
must hold are set on the base and on every generation alike.

Session resumption skips client-certificate verification, which would let a
revoked or no-longer-trusted client back in for the session's lifetime
(OpenSSL's default: two hours). SECURITY: no tickets at all (TLS 1.3 never
resumes; TLS 1.2 only from the server's session cache), and a TLS 1.2 session
that predates an update which narrowed trust (a CA removed, a serial newly
revoked) is refused in the callback; the client has to start afresh.
"""

from __future__ import annotations

import shutil
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes

from gateway.errors import ConfigError
from gateway.files import write_private
from gateway.tls._policy import server_policy_context

_PEM = serialization.Encoding.PEM
_CRL_BEGIN = b"-----BEGIN X509 CRL-----"


@dataclass(frozen=True)
class TlsMaterial:
    cert_chain_pem: bytes  # server certificate (+ intermediates)
    key_pem: bytes  # server private key (unencrypted PEM)
    trust_bundle_pem: bytes  # one or more CA certificates accepted for client certs
    crl_pems: tuple[bytes, ...] = ()  # CRLs; with check_crl, one per CA in the bundle


class TlsMaterialError(ConfigError):
    """The material cannot be served; the message says what is wrong."""


@dataclass(frozen=True)
class _Checked:
    """Material that passed every check, parsed; only this reaches OpenSSL."""

    chain: tuple[x509.Certificate, ...]
    key_pem: bytes
    anchors: tuple[x509.Certificate, ...]
    crls: tuple[x509.CertificateRevocationList, ...]

    def anchor_ids(self) -> frozenset[bytes]:
        return frozenset(a.public_bytes(serialization.Encoding.DER) for a in self.anchors)

    def revoked(self) -> frozenset[tuple[bytes, int]]:
        return frozenset((crl.issuer.public_bytes(), r.serial_number)
                         for crl in self.crls for r in crl)


@dataclass(frozen=True)
class _Generation:
    number: int
    material: TlsMaterial
    checked: _Checked
    context: ssl.SSLContext
    narrowed_at: float  # wall-clock seconds: sessions older than this must not resume


def _certificates(pem: bytes, what: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise TlsMaterialError(f"{what}: no parsable PEM certificate") from exc


def _private_key_pem(pem: bytes, leaf: x509.Certificate) -> bytes:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise TlsMaterialError(f"server key: not an unencrypted PEM private key ({exc})") from exc
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if (key.public_key().public_bytes(_PEM, spki)
            != leaf.public_key().public_bytes(_PEM, spki)):
        raise TlsMaterialError(
            f"server key does not match the server certificate {leaf.subject.rfc4514_string()}")
    return key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _crl(pem: bytes, index: int) -> x509.CertificateRevocationList:
    if pem.count(b"-----BEGIN ") != 1 or _CRL_BEGIN not in pem:  # nothing alongside
        raise TlsMaterialError(f"CRL #{index}: expected exactly one PEM CRL, nothing else")
    try:
        return x509.load_pem_x509_crl(pem)
    except ValueError as exc:
        raise TlsMaterialError(f"CRL #{index}: not a parsable PEM CRL") from exc


def _issuer_key(ca: x509.Certificate) -> CertificateIssuerPublicKeyTypes:
    return cast(CertificateIssuerPublicKeyTypes, ca.public_key())  # a CA's key signs


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    return crl.issuer == ca.subject and crl.is_signature_valid(_issuer_key(ca))


def _crls(anchors: list[x509.Certificate], crls: list[x509.CertificateRevocationList],
          now: datetime, check_crl: bool) -> list[x509.CertificateRevocationList]:
    """The CRLs of the bundle's CAs; a wrong signature or date is an error."""
    kept = []
    for i, crl in enumerate(crls):
        name = f"CRL #{i} ({crl.issuer.rfc4514_string()})"
        if not any(a.subject == crl.issuer for a in anchors):
            continue  # its CA is no longer trusted: it can revoke nothing
        if not any(_signed_by(crl, a) for a in anchors):
            raise TlsMaterialError(f"{name}: signature does not verify with the CA's key")
        if crl.last_update_utc > now:
            raise TlsMaterialError(f"{name}: not valid before {crl.last_update_utc}")
        if crl.next_update_utc is not None and crl.next_update_utc < now:
            raise TlsMaterialError(f"{name}: expired at {crl.next_update_utc}")
        kept.append(crl)
    for anchor in anchors if check_crl else ():
        if not any(_signed_by(crl, anchor) for crl in kept):
            raise TlsMaterialError(
                f"no CRL for CA {anchor.subject.rfc4514_string()} (CRL checking is on)")
    return kept


def check_material(material: TlsMaterial, *, check_crl: bool,
                   now: datetime | None = None) -> _Checked:
    """Parse and cross-check ``material``; raise TlsMaterialError saying what is wrong."""
    now = now or datetime.now(UTC)
    chain = _certificates(material.cert_chain_pem, "server certificate chain")
    if chain[0].not_valid_after_utc < now:
        raise TlsMaterialError(f"server certificate expired at {chain[0].not_valid_after_utc}")
    key_pem = _private_key_pem(material.key_pem, chain[0])
    anchors = _certificates(material.trust_bundle_pem, "trust bundle")
    for cert in anchors:
        if not _is_ca(cert):
            raise TlsMaterialError(
                f"trust bundle: {cert.subject.rfc4514_string()} is not a CA certificate")
    parsed = [_crl(pem, i) for i, pem in enumerate(material.crl_pems)]
    crls = _crls(anchors, parsed, now, check_crl)
    return _Checked(tuple(chain), key_pem, tuple(anchors), tuple(crls))


def _policy_context(check_crl: bool) -> ssl.SSLContext:
    """The listeners' TLS policy, without the material: one function for all
    (gateway.tls._policy.server_policy_context: versions, ciphers, the key-exchange
    group, no tickets, client certificate required, CRL checks)."""
    return server_policy_context(check_crl)


def _build_context(checked: _Checked, check_crl: bool) -> ssl.SSLContext:
    try:
        return _load(checked, _policy_context(check_crl))
    except OSError as exc:  # ssl.SSLError is one
        raise TlsMaterialError(f"could not load the material: {exc}") from exc


def _load(checked: _Checked, ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.load_verify_locations(  # only our CA(s) are trusted
        cadata="".join(a.public_bytes(_PEM).decode() for a in checked.anchors))
    # load_cert_chain needs files, and cadata silently drops CRLs: write what
    # was checked (re-serialised) to a private directory, load, delete.
    tmp = Path(tempfile.mkdtemp(prefix="gateway-tls-"))  # mode 0700
    try:
        chain, key, crls = tmp / "chain.pem", tmp / "key.pem", tmp / "crls.pem"
        write_private(chain, b"".join(c.public_bytes(_PEM) for c in checked.chain))
        write_private(key, checked.key_pem)  # 0600 from the first byte
        ctx.load_cert_chain(str(chain), str(key))
        if checked.crls:
            write_private(crls, b"".join(c.public_bytes(_PEM) for c in checked.crls))
            ctx.load_verify_locations(cafile=str(crls))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ctx


def _narrows(old: _Checked, new: _Checked) -> bool:
    """Would a client accepted under ``old`` possibly be refused under ``new``?"""
    return bool(old.anchor_ids() - new.anchor_ids()) or bool(new.revoked() - old.revoked())


class ServerTls:
    """The listener's TLS: one base context, material swapped per new handshake."""

    def __init__(self, material: TlsMaterial, *, check_crl: bool = False) -> None:
        self._check_crl = check_crl
        checked = check_material(material, check_crl=check_crl)
        context = _build_context(checked, check_crl)
        self._current = _Generation(0, material, checked, context, narrowed_at=0.0)
        # The first generation's context is the base: it carries the flags
        # every connection keeps, and hands over to the newest generation.
        self._base = context
        self._base.sni_callback = self._on_client_hello
        self._update_lock = threading.Lock()  # serialises updates, not handshakes

    @property
    def context(self) -> ssl.SSLContext:
        """The base context: give it to the listener once."""
        return self._base

    @property
    def generation(self) -> int:
        return self._current.number

    @property
    def material(self) -> TlsMaterial:
        return self._current.material

    def update(self, material: TlsMaterial) -> None:
        """Check ``material``, build its context, make it current for new handshakes.

        On any error raise TlsMaterialError and keep serving the old material.
        Safe to call from any thread.
        """
        checked = check_material(material, check_crl=self._check_crl)
        context = _build_context(checked, self._check_crl)
        with self._update_lock:
            old = self._current
            narrowed_at = time.time() if _narrows(old.checked, checked) else old.narrowed_at
            # The swap: one reference assignment, atomic under the GIL.
            self._current = _Generation(old.number + 1, material, checked, context,
                                        narrowed_at)

    def _on_client_hello(self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                         base: ssl.SSLContext) -> int | None:
        """OpenSSL's servername callback: runs for every ClientHello, SNI or not."""
        current = self._current  # read once: an update cannot split this handshake
        try:
            if conn.session_reused:
                session = conn.session
                # SECURITY: a resumed session skips the certificate checks;
                # refuse one that predates a narrowing of trust (SSLSession.time
                # is whole seconds, rounded down: the comparison errs on refusing).
                if session is None or session.time < current.narrowed_at:
                    return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
            conn.context = current.context
        except Exception:  # an exception here would only be printed, and fail the handshake
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        return None
