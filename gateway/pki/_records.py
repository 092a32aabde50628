"""What the credential lifecycle records and refuses: certificate records
from X.509 certificates, the revocation view the request path checks, the
admin plane's refusal, the admin roles."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.errors import RequestRefused
from gateway.state import CertificateRecord, PrincipalKey, StateStore

SERVER_PRINCIPAL: PrincipalKey = ("gateway", "server", "gateway")


class AdminRefused(RequestRefused):
    """An admin request that is refused; ``reason`` is a stable code and
    ``detail`` says why, to the admin (it is their own request)."""

    detail: str

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(status, reason, detail=detail)

    def __str__(self) -> str:
        return self.detail


@dataclass(frozen=True, slots=True)
class RevocationView:
    """What the request path checks on every request (one reference swap)."""

    serials: frozenset[str] = frozenset()
    disabled: frozenset[PrincipalKey] = frozenset()


def serial_hex(cert: x509.Certificate) -> str:
    # The same spelling as ssl.getpeercert()["serialNumber"].
    return f"{cert.serial_number:X}"


def ca_id(cert: x509.Certificate) -> str:
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    return hashlib.sha256(ski).hexdigest()[:16]


def certificate_record(cert: x509.Certificate, principal: PrincipalKey, issuer: str,
                       now: datetime, replaces: str | None = None) -> CertificateRecord:
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    der = cert.public_bytes(serialization.Encoding.DER)
    return CertificateRecord(
        serial=serial_hex(cert), tenant=principal[0], kind=principal[1], name=principal[2],
        issuer_ca=issuer, not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc, fingerprint=hashlib.sha256(der).hexdigest(),
        pem=pem, issued_at=now, replaces=replaces)


def issuer_id(cert: x509.Certificate) -> str:
    """The id of the CA that issued ``cert`` (from its authority key id)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ident = aki.key_identifier or b""
    return hashlib.sha256(ident).hexdigest()[:16]


def import_certificate(store: StateStore, pem: bytes, principal: PrincipalKey,
                       now: datetime) -> None:
    """Record a certificate issued outside the admin API (the dev PKI) in
    ``store``, once."""
    cert = x509.load_pem_x509_certificate(pem)
    if store.certificate(serial_hex(cert)) is None:
        store.add_certificate(certificate_record(cert, principal, issuer_id(cert), now))

ADMIN_ROLES = frozenset({"security-admin", "vault-approver", "auditor"})
REASON_LABELS = frozenset({"key-compromise", "superseded", "cessation-of-operation",
                            "affiliation-changed", "unspecified"})


def reason_label(reason: str) -> str:
    # Free-text reasons go to the audit event; the metric label stays bounded.
    return reason if reason in REASON_LABELS else "unspecified"
