"""The CA's signing verbs: certificates from tenant CSRs, CRLs, and a profile lint.

Pure crypto over frozen inputs and an injected ``now`` (no I/O, no aiohttp):
the admin plane authenticates the caller, works out the principal URI the
request may name, and hands both to :func:`issue_from_csr`. The tenant's
private key never reaches the CA (DESIGN.md §5); the CSR only proves that the
requester holds it.

Every certificate follows the profile of :meth:`CertificateAuthority.issue_client`
(RFC 5280); :func:`lint_certificate` checks that profile so tests can prove
the whole PKI clean.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import (
    ExtendedKeyUsageOID,
    NameOID,
    PublicKeyAlgorithmOID,
    SignatureAlgorithmOID,
)

from gateway.errors import RequestRefused
from gateway.pki._authority import BACKDATE, CertificateAuthority

_E = TypeVar("_E", bound=x509.ExtensionType)

RefusalReason = Literal["csr-malformed", "csr-bad-signature", "san-mismatch", "weak-key",
                        "lifetime-exceeds-policy"]


class CsrRefused(RequestRefused):
    """A CSR the CA will not sign. ``reason`` is a stable code for audit/metrics."""

    reason: RefusalReason

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(422, reason, detail=message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class IssuancePolicy:
    default_lifetime: timedelta = timedelta(days=30)
    max_lifetime: timedelta = timedelta(days=90)
    min_rsa_bits: int = 2048
    # Names as cryptography's ``curve.name``.
    allowed_curves: frozenset[str] = frozenset({"secp256r1", "secp384r1"})
    allow_ed25519: bool = True


DEFAULT_POLICY = IssuancePolicy()


def check_csr(csr_pem: bytes, *, expected_uri: str, policy: IssuancePolicy = DEFAULT_POLICY,
              lifetime: timedelta | None = None) -> tuple[CertificatePublicKeyTypes, timedelta]:
    """Everything :func:`issue_from_csr` checks, without signing: the public key
    and the lifetime to certify. A request that waits for a second admin (D6)
    is checked when it is made, so nobody approves a CSR that cannot be issued.
    Raises :class:`CsrRefused` or ``ValueError`` as :func:`issue_from_csr`."""
    if not expected_uri.startswith("spiffe://") or not expected_uri.rsplit("/", 1)[-1]:
        raise ValueError(f"not a principal URI: {expected_uri!r}")
    lifetime = policy.default_lifetime if lifetime is None else lifetime
    if lifetime <= timedelta(0):
        raise ValueError(f"lifetime must be positive, got {lifetime}")
    if lifetime > policy.max_lifetime:
        raise CsrRefused("lifetime-exceeds-policy", f"requested lifetime {lifetime} "
                                                    f"exceeds the maximum {policy.max_lifetime}")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
        if csr.public_key_algorithm_oid == PublicKeyAlgorithmOID.DSA:  # type: ignore[attr-defined]
            # Refused before the key is loaded: cryptography deprecates DSA
            # and warns on loading one (_check_key refuses it as well).
            raise CsrRefused("weak-key", "DSAPublicKey keys are not accepted")
        public_key = csr.public_key()
        requested = csr.extensions  # parsed lazily: duplicates and bad DER surface here
    except UnsupportedAlgorithm as exc:
        raise CsrRefused("weak-key", f"CSR key algorithm is not supported: {exc}") from exc
    except (ValueError, x509.DuplicateExtension) as exc:
        raise CsrRefused("csr-malformed", f"CSR cannot be parsed: {exc}") from exc
    _check_key(public_key, policy)
    # SECURITY: the self-signature is the requester's proof of possession of
    # the private key (RFC 2986 §3); without it anyone could certify a key
    # they copied from someone else's certificate.
    if not csr.is_signature_valid:
        raise CsrRefused("csr-bad-signature", "CSR signature does not verify with its own key")
    try:
        san = requested.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass  # the CA names the principal itself
    else:
        # SECURITY: a CSR naming any other identity (another tenant's URI, a
        # DNS name, a second URI) is refused rather than trimmed, so a
        # mistaken or hostile request is visible in the audit log.
        names = list(san)
        if names != [x509.UniformResourceIdentifier(expected_uri)]:
            shown = ", ".join(f"{type(n).__name__}={n.value!r}" for n in names) or "nothing"
            raise CsrRefused("san-mismatch",
                             f"CSR SAN must name exactly {expected_uri!r}, it names {shown}")
    return public_key, lifetime


def issue_from_csr(ca: CertificateAuthority, csr_pem: bytes, *, expected_uri: str,
                   policy: IssuancePolicy = DEFAULT_POLICY, lifetime: timedelta | None = None,
                   now: datetime | None = None) -> x509.Certificate:
    """Sign a client certificate for ``expected_uri`` over the CSR's public key.

    ``expected_uri`` comes from the authenticated request, never from the CSR:
    the CSR may only repeat it. Raises :class:`CsrRefused` for any CSR the
    policy does not accept, ``ValueError`` for a caller bug (a bad URI or a
    non-positive lifetime).
    """
    public_key, lifetime = check_csr(csr_pem, expected_uri=expected_uri, policy=policy,
                                     lifetime=lifetime)
    now = now or datetime.now(UTC)
    # SECURITY: the CSR subject and every other requested extension are
    # ignored; the CA alone decides the profile (basic constraints, usages).
    cn = x509.NameAttribute(NameOID.COMMON_NAME, expected_uri.rsplit("/", 1)[-1])
    return _client_leaf(ca, x509.Name([cn]), public_key, expected_uri, now - BACKDATE,
                        now + lifetime)


def _check_key(key: CertificatePublicKeyTypes, policy: IssuancePolicy) -> None:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < policy.min_rsa_bits:
            raise CsrRefused("weak-key", f"RSA key of {key.key_size} bits is below the "
                                         f"minimum of {policy.min_rsa_bits}")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in policy.allowed_curves:
            raise CsrRefused("weak-key", f"EC curve {key.curve.name} is not allowed "
                                         f"(allowed: {', '.join(sorted(policy.allowed_curves))})")
    elif isinstance(key, ed25519.Ed25519PublicKey):
        if not policy.allow_ed25519:
            raise CsrRefused("weak-key", "Ed25519 keys are not allowed by policy")
    else:
        # DSA, Ed448, X25519, X448: not offered by the TLS stacks we serve.
        raise CsrRefused("weak-key", f"{type(key).__name__} keys are not accepted")


def _client_leaf(ca: CertificateAuthority, subject: x509.Name,
                 public_key: CertificatePublicKeyTypes, uri: str,
                 not_before: datetime, not_after: datetime) -> x509.Certificate:
    """The one certificate profile of the PKI (``CertificateAuthority.leaf``)."""
    return ca.leaf(subject, public_key,
                   x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]),
                   ExtendedKeyUsageOID.CLIENT_AUTH, not_before, not_after)


@dataclass(frozen=True)
class RevokedEntry:
    serial: int
    revoked_at: datetime
    reason: x509.ReasonFlags | None = None  # e.g. key_compromise, superseded


def build_crl(ca: CertificateAuthority, revoked: Iterable[RevokedEntry], *, crl_number: int,
              now: datetime | None = None,
              next_update: timedelta = timedelta(hours=24)) -> x509.CertificateRevocationList:
    """A complete v2 CRL (RFC 5280 §5) signed by the CA; empty is fine."""
    # RFC 5280 §5.2.3: a non-negative integer of at most 20 octets.
    if not 0 <= crl_number < 2**159:
        raise ValueError(f"CRL number out of range: {crl_number}")
    if next_update <= timedelta(0):
        raise ValueError(f"next_update must be positive, got {next_update}")
    now = now or datetime.now(UTC)
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)  # §5.1.2.3: the CA's subject
        .last_update(now)
        .next_update(now + next_update)  # §5.1.2.5: conforming CAs always set it
        .add_extension(x509.CRLNumber(crl_number), critical=False)  # §5.2.3: MUST
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)  # §5.2.1: MUST
    )
    seen: set[int] = set()
    for entry in revoked:
        if entry.serial in seen:
            raise ValueError(f"serial {entry.serial:#x} listed twice")
        seen.add(entry.serial)
        if entry.reason is x509.ReasonFlags.remove_from_crl:
            raise ValueError("removeFromCRL belongs in delta CRLs only (RFC 5280 §5.3.1)")
        item = x509.RevokedCertificateBuilder().serial_number(entry.serial) \
            .revocation_date(entry.revoked_at)
        # §5.3.1: reasonCode "unspecified" SHOULD be omitted rather than sent.
        if entry.reason is not None and entry.reason is not x509.ReasonFlags.unspecified:
            item = item.add_extension(x509.CRLReason(entry.reason), critical=False)
        builder = builder.add_revoked_certificate(item.build())
    return builder.sign(ca.key, hashes.SHA256())


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)


_STRONG_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512,
                  hashes.SHA3_256, hashes.SHA3_384, hashes.SHA3_512)
_EKU_NAMES = {ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
              ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth"}
_HASHLESS_SIGNATURES = {SignatureAlgorithmOID.ED25519, SignatureAlgorithmOID.ED448}


def lint_certificate(cert: x509.Certificate, issuer: x509.Certificate, *, client: bool = True,
                     max_lifetime: timedelta | None = None) -> list[str]:
    """Problems of ``cert`` against the project's RFC 5280 profile; empty means clean.

    ``max_lifetime`` bounds the whole validity period, backdating included.
    """
    problems: list[str] = []
    if cert.version is not x509.Version.v3:
        problems.append(f"version is {cert.version.name}, not v3 (RFC 5280 §4.1.2.1)")
    serial = cert.serial_number
    if serial <= 0 or (serial.bit_length() + 8) // 8 > 20:
        problems.append(f"serial {serial:#x} is not positive or exceeds 20 octets "
                        "(RFC 5280 §4.1.2.2)")
    elif serial.bit_length() < 64:
        problems.append(f"serial {serial:#x} has fewer than 64 bits of entropy")
    oid = cert.signature_algorithm_oid
    try:
        algo = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        algo = None
    if algo is None and oid not in _HASHLESS_SIGNATURES:
        problems.append(f"unknown signature algorithm {oid.dotted_string}")
    elif algo is not None and not isinstance(algo, _STRONG_HASHES):
        problems.append(f"signature hash {algo.name} is weaker than SHA-256")
    if cert.issuer != issuer.subject:
        problems.append(f"issuer {cert.issuer.rfc4514_string()} is not the CA subject "
                        f"{issuer.subject.rfc4514_string()} (RFC 5280 §4.1.2.4)")
    else:
        try:
            cert.verify_directly_issued_by(issuer)
        except (InvalidSignature, ValueError, TypeError) as exc:
            problems.append(f"signature does not verify with the issuer key: {exc!r}")
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if start >= end:
        problems.append(f"notBefore {start} is not before notAfter {end}")
    elif max_lifetime is not None and end - start > max_lifetime:
        problems.append(f"lifetime {end - start} exceeds {max_lifetime}")
    if end > issuer.not_valid_after_utc:
        problems.append("notAfter is later than the issuer's notAfter")
    problems += _lint_extensions(cert, issuer, client=client)
    return problems


def _find(cert: x509.Certificate, kind: type[_E]) -> x509.Extension[_E] | None:
    try:
        return cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return None


def _lint_extensions(cert: x509.Certificate, issuer: x509.Certificate, *,
                     client: bool) -> list[str]:
    problems: list[str] = []
    bc = _find(cert, x509.BasicConstraints)
    if bc is None or not bc.critical or bc.value.ca:
        problems.append("BasicConstraints must be present, critical, CA:FALSE "
                        "(RFC 5280 §4.2.1.9)")
    ku = _find(cert, x509.KeyUsage)
    if ku is None:
        problems.append("KeyUsage missing (RFC 5280 §4.2.1.3)")
    else:
        if not ku.critical:
            problems.append("KeyUsage is not critical (RFC 5280 §4.2.1.3)")
        if not ku.value.digital_signature:
            problems.append("KeyUsage lacks digitalSignature")
        if ku.value.key_cert_sign or ku.value.crl_sign:
            problems.append("KeyUsage of an end entity has keyCertSign or cRLSign "
                            "(RFC 5280 §4.2.1.3)")
    want = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    eku = _find(cert, x509.ExtendedKeyUsage)
    usages = [_EKU_NAMES.get(u, u.dotted_string) for u in eku.value] if eku else []
    if usages != [_EKU_NAMES[want]]:
        problems.append(f"ExtendedKeyUsage is {usages or 'missing'}, expected only "
                        f"{_EKU_NAMES[want]} (RFC 5280 §4.2.1.12)")
    if _find(cert, x509.SubjectKeyIdentifier) is None:
        problems.append("SubjectKeyIdentifier missing (RFC 5280 §4.2.1.2)")
    aki, issuer_ski = _find(cert, x509.AuthorityKeyIdentifier), _find(issuer,
                                                                     x509.SubjectKeyIdentifier)
    if aki is None:
        problems.append("AuthorityKeyIdentifier missing (RFC 5280 §4.2.1.1)")
    elif issuer_ski is None or aki.value.key_identifier != issuer_ski.value.digest:
        problems.append("AuthorityKeyIdentifier does not match the issuer's "
                        "SubjectKeyIdentifier (RFC 5280 §4.2.1.1)")
    san = _find(cert, x509.SubjectAlternativeName)
    if san is None:
        problems.append("SubjectAlternativeName missing (RFC 5280 §4.2.1.6)")
        return problems
    if not list(cert.subject) and not san.critical:
        problems.append("subject is empty but SubjectAlternativeName is not critical "
                        "(RFC 5280 §4.2.1.6)")
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    if client and (len(uris) != 1 or not uris[0].startswith("spiffe://")):
        problems.append(f"client certificate must carry exactly one spiffe:// URI SAN, "
                        f"has {uris}")
    if not client and not (san.value.get_values_for_type(x509.DNSName)
                           or san.value.get_values_for_type(x509.IPAddress)):
        problems.append("server certificate SAN names no DNS name or IP address")
    return problems


def make_key_and_csr(uri: str) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """What a tenant does on its side: a P-256 key and a CSR naming ``uri``.

    Only the CSR goes to the CA; the private key stays with the tenant.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                    uri.rsplit("/", 1)[-1])]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM)
