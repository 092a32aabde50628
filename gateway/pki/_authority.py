"""The gateway's own PKI (package ``cryptography``; no shell openssl).

A CA issues server certificates and tenant client certificates. Client
certificates name their principal in a URI SAN
``spiffe://<trust-domain>/tenant/<tenant>/<kind>/<name>`` and carry EKU
clientAuth only. Profile (RFC 5280): random 159-bit serials, SKI/AKI, key
usage marked critical, basic constraints, short lifetimes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_CLIENT_LIFETIME = timedelta(days=30)
DEFAULT_SERVER_LIFETIME = timedelta(days=90)
DEFAULT_CA_LIFETIME = timedelta(days=3650)
# Issue certificates a little in the past so a peer with a slightly slow
# clock does not reject a fresh certificate as "not yet valid".
BACKDATE = timedelta(minutes=5)

PrivateKey = ec.EllipticCurvePrivateKey


def new_key() -> PrivateKey:
    # P-256: fast handshakes, approved everywhere (Mozilla intermediate).
    return ec.generate_private_key(ec.SECP256R1())


def spiffe_uri(trust_domain: str, tenant: str, kind: str, name: str) -> str:
    return f"spiffe://{trust_domain}/tenant/{tenant}/{kind}/{name}"


@dataclass(frozen=True)
class IssuedCertificate:
    certificate: x509.Certificate
    key: PrivateKey | None  # None when issued from a CSR: the key stays with its owner

    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        if self.key is None:
            raise ValueError("issued from a CSR: no private key here")
        return key_pem(self.key)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class CertificateAuthority:
    def __init__(self, certificate: x509.Certificate, key: PrivateKey) -> None:
        self.certificate = certificate
        self.key = key

    @classmethod
    def create(cls, common_name: str, *, now: datetime | None = None,
               lifetime: timedelta = DEFAULT_CA_LIFETIME) -> CertificateAuthority:
        now = now or datetime.now(UTC)
        key = new_key()
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Shared grid gateway"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> CertificateAuthority:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path}: expected an EC private key")
        return cls(cert, key)

    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return key_pem(self.key)

    def leaf(self, subject: x509.Name, public_key: CertificatePublicKeyTypes,
              san: x509.SubjectAlternativeName, eku: x509.ObjectIdentifier,
              not_before: datetime, not_after: datetime) -> x509.Certificate:
        ca_ski = self.certificate.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier).value
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            # RFC 5280 4.2.1.6: SAN is critical only when the subject is empty.
            .add_extension(san, critical=not list(subject))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def issue_client(self, uri: str, *, key: PrivateKey | None = None,
                     now: datetime | None = None,
                     lifetime: timedelta = DEFAULT_CLIENT_LIFETIME,
                     not_before: datetime | None = None) -> IssuedCertificate:
        """A client certificate for principal ``uri`` (a key is made if none given)."""
        now = now or datetime.now(UTC)
        key = key or new_key()
        start = not_before or now - BACKDATE
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, uri.rsplit("/", 1)[-1])])
        cert = self.leaf(subject, key.public_key(),
                          x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]),
                          ExtendedKeyUsageOID.CLIENT_AUTH, start, now + lifetime)
        return IssuedCertificate(cert, key)

    def issue_server(self, dns_names: Sequence[str], ips: Sequence[str] = (), *,
                     key: PrivateKey | None = None, now: datetime | None = None,
                     lifetime: timedelta = DEFAULT_SERVER_LIFETIME) -> IssuedCertificate:
        now = now or datetime.now(UTC)
        key = key or new_key()
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])])
        cert = self.leaf(subject, key.public_key(), x509.SubjectAlternativeName(names),
                          ExtendedKeyUsageOID.SERVER_AUTH, now - BACKDATE, now + lifetime)
        return IssuedCertificate(cert, key)


def principal_uri(cert: x509.Certificate) -> str | None:
    """The single URI SAN of a client certificate, if it has exactly one."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if len(uris) == 1 else None
