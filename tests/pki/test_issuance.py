"""The CA's signing verbs: CSR issuance policy, CRLs that openssl accepts, the profile lint."""

from __future__ import annotations

import base64
import subprocess
import sys
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.pki._authority import (
    BACKDATE,
    DEFAULT_CLIENT_LIFETIME,
    CertificateAuthority,
    spiffe_uri,
)
from gateway.pki._issuance import (
    CsrRefused,
    RevokedEntry,
    build_crl,
    crl_pem,
    issue_from_csr,
    lint_certificate,
    make_key_and_csr,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
URI = spiffe_uri("shared-grid.test", "ores", "service", "api")
OTHER_TENANT = spiffe_uri("shared-grid.test", "elia", "service", "api")


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("Test CA", now=NOW - timedelta(days=1))


def _csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
         | ed448.Ed448PrivateKey | dsa.DSAPrivateKey,
         names: list[x509.GeneralName] | None = None,
         subject: str = "api") -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    algo = None if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) \
        else hashes.SHA256()
    return builder.sign(key, algo).public_bytes(serialization.Encoding.PEM)


def _pem(der: bytes) -> bytes:
    return (b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(der)
            + b"-----END CERTIFICATE REQUEST-----\n")


def _refused(ca: CertificateAuthority, csr: bytes, **kw: object) -> CsrRefused:
    with pytest.raises(CsrRefused) as info:
        issue_from_csr(ca, csr, expected_uri=URI, now=NOW, **kw)  # type: ignore[arg-type]
    return info.value


# -- issuance -----------------------------------------------------------------------------

def test_csr_happy_path(ca: CertificateAuthority) -> None:
    key, csr = make_key_and_csr(URI)
    cert = issue_from_csr(ca, csr, expected_uri=URI, now=NOW)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [URI]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == \
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "api"
    assert cert.not_valid_before_utc == NOW - BACKDATE
    assert cert.not_valid_after_utc == NOW + timedelta(days=30)
    assert cert.public_key() == key.public_key()
    assert lint_certificate(cert, ca.certificate, max_lifetime=timedelta(days=30) + BACKDATE) \
        == []


def test_whole_pki_lints_clean(ca: CertificateAuthority) -> None:
    client = ca.issue_client(URI, now=NOW).certificate
    assert lint_certificate(client, ca.certificate,
                            max_lifetime=DEFAULT_CLIENT_LIFETIME + BACKDATE) == []
    server = ca.issue_server(["gateway.test"], ["127.0.0.1"], now=NOW).certificate
    assert lint_certificate(server, ca.certificate, client=False) == []
    # ...and the lint knows a client certificate from a server one.
    assert any("ExtendedKeyUsage" in p for p in lint_certificate(server, ca.certificate))


def test_csr_subject_and_requested_extensions_are_ignored(ca: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "root")]))
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(URI)]),
                          critical=False)
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    cert = issue_from_csr(ca, csr, expected_uri=URI, now=NOW)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "api"
    assert lint_certificate(cert, ca.certificate) == []


def test_csr_without_san_gets_the_expected_uri(ca: CertificateAuthority) -> None:
    cert = issue_from_csr(ca, _csr(ec.generate_private_key(ec.SECP384R1())),
                          expected_uri=URI, now=NOW, lifetime=timedelta(days=7))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [URI]
    assert cert.not_valid_after_utc == NOW + timedelta(days=7)


@pytest.mark.parametrize("names", [
    [x509.UniformResourceIdentifier(OTHER_TENANT)],
    [x509.UniformResourceIdentifier(URI), x509.UniformResourceIdentifier(OTHER_TENANT)],
    [x509.UniformResourceIdentifier(URI), x509.DNSName("api.ores.test")],
    [x509.DNSName("api.ores.test")],
    [x509.UniformResourceIdentifier(URI.upper())],
], ids=["other-tenant", "second-uri", "extra-dns", "dns-only", "case-differs"])
def test_csr_naming_another_identity_is_refused(ca: CertificateAuthority,
                                               names: list[x509.GeneralName]) -> None:
    exc = _refused(ca, _csr(ec.generate_private_key(ec.SECP256R1()), names))
    assert exc.reason == "san-mismatch"
    assert URI in str(exc)


def test_other_tenants_csr_is_refused_with_its_name_in_the_message(
        ca: CertificateAuthority) -> None:
    _, csr = make_key_and_csr(OTHER_TENANT)
    exc = _refused(ca, csr)
    assert exc.reason == "san-mismatch" and OTHER_TENANT in str(exc)


KeyMaker = Callable[[], object]


def _dsa_key() -> dsa.DSAPrivateKey:
    """A DSA key: what a partner might still send. cryptography 51 warns that
    it deprecates DSA; the warning is about making the key, which the test
    does on purpose, not about the gateway's handling of it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return dsa.generate_private_key(1024)


@pytest.mark.parametrize(("make", "accepted"), [
    (lambda: rsa.generate_private_key(65537, 1024), False),
    (lambda: rsa.generate_private_key(65537, 2048), True),
    (lambda: ec.generate_private_key(ec.SECP521R1()), False),
    (lambda: ec.generate_private_key(ec.SECP224R1()), False),
    (lambda: ec.generate_private_key(ec.SECP192R1()), False),
    (lambda: ec.generate_private_key(ec.SECP384R1()), True),
    (ed25519.Ed25519PrivateKey.generate, True),
    (ed448.Ed448PrivateKey.generate, False),
    (lambda: _dsa_key(), False),
], ids=["rsa1024", "rsa2048", "p521", "p224", "p192", "p384", "ed25519", "ed448", "dsa"])
def test_key_policy(ca: CertificateAuthority, make: KeyMaker, accepted: bool) -> None:
    csr = _csr(make(), [x509.UniformResourceIdentifier(URI)])  # type: ignore[arg-type]
    if accepted:
        cert = issue_from_csr(ca, csr, expected_uri=URI, now=NOW)
        assert lint_certificate(cert, ca.certificate) == []
    else:
        exc = _refused(ca, csr)
        assert exc.reason == "weak-key", str(exc)


def test_tampered_csr_fails_its_signature(ca: CertificateAuthority) -> None:
    _, csr = make_key_and_csr(URI)
    der = x509.load_pem_x509_csr(csr).public_bytes(serialization.Encoding.DER)
    flipped = bytearray(der)
    flipped[-1] ^= 0x01  # the last octet of the ECDSA signature's s
    assert _refused(ca, _pem(bytes(flipped))).reason == "csr-bad-signature"
    # Rewriting the signed body (here: the tenant in the SAN) breaks it too.
    forged = der.replace(b"/tenant/ores/", b"/tenant/orez/")
    assert forged != der
    assert _refused(ca, _pem(forged)).reason == "csr-bad-signature"


@pytest.mark.parametrize("data", [b"", b"garbage", _pem(b"\x30\x03\x02\x01\x00"),
                                  b"-----BEGIN CERTIFICATE REQUEST-----\n!!\n"
                                  b"-----END CERTIFICATE REQUEST-----\n"])
def test_garbage_is_malformed(ca: CertificateAuthority, data: bytes) -> None:
    assert _refused(ca, data).reason == "csr-malformed"


def test_lifetime_policy(ca: CertificateAuthority) -> None:
    _, csr = make_key_and_csr(URI)
    exc = _refused(ca, csr, lifetime=timedelta(days=365))
    assert exc.reason == "lifetime-exceeds-policy" and "365 days" in str(exc)
    cert = issue_from_csr(ca, csr, expected_uri=URI, now=NOW, lifetime=timedelta(days=90))
    assert cert.not_valid_after_utc == NOW + timedelta(days=90)


def test_ca_module_is_sans_io() -> None:
    code = ("import sys, gateway.pki._issuance\n"
            "sys.exit(1 if [m for m in sys.modules if m.split('.')[0] == 'aiohttp'] else 0)\n")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# -- lint ---------------------------------------------------------------------------------

def _bad_leaf(ca: CertificateAuthority, *, serial: int | None = None, ku: bool = True,
              ku_critical: bool = True, aki: bool = True, is_ca: bool = False,
              eku: x509.ObjectIdentifier = ExtendedKeyUsageOID.CLIENT_AUTH,
              subject: x509.Name | None = None, san_critical: bool = False) -> x509.Certificate:
    """A client certificate like the CA's, with one deliberate defect."""
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "api")])
                       if subject is None else subject)
         .issuer_name(ca.certificate.subject)
         .public_key(key.public_key())
         .serial_number(serial or x509.random_serial_number())
         .not_valid_before(NOW)
         .not_valid_after(NOW + timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
         .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
         .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(URI)]),
                        critical=san_critical)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                        critical=False))
    if ku:
        b = b.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=ku_critical)
    if aki:
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False)
    return b.sign(ca.key, hashes.SHA256())


@pytest.mark.parametrize(("defect", "message"), [
    ({}, None),
    ({"ku": False}, "KeyUsage missing"),
    ({"ku_critical": False}, "KeyUsage is not critical"),
    ({"serial": 1}, "64 bits"),
    ({"aki": False}, "AuthorityKeyIdentifier missing"),
    ({"is_ca": True}, "CA:FALSE"),
    ({"eku": ExtendedKeyUsageOID.SERVER_AUTH}, "expected only clientAuth"),
    ({"subject": x509.Name([])}, "SubjectAlternativeName is not critical"),
    ({"subject": x509.Name([]), "san_critical": True}, None),
])
def test_lint_catches_defects(ca: CertificateAuthority, defect: dict[str, object],
                              message: str | None) -> None:
    problems = lint_certificate(_bad_leaf(ca, **defect), ca.certificate)  # type: ignore[arg-type]
    if message is None:
        assert problems == []
    else:
        assert len(problems) == 1 and message in problems[0], problems


def test_lint_catches_wrong_issuer_and_lifetime(ca: CertificateAuthority) -> None:
    other = CertificateAuthority.create("Other CA", now=NOW - timedelta(days=1))
    cert = ca.issue_client(URI, now=NOW).certificate
    assert any("not the CA subject" in p for p in lint_certificate(cert, other.certificate))
    assert any("lifetime" in p for p in lint_certificate(cert, ca.certificate,
                                                         max_lifetime=timedelta(days=30)))


# -- CRL ----------------------------------------------------------------------------------

def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/usr/bin/openssl", *args], capture_output=True, text=True,
                          check=False, timeout=20)


def test_crl_is_accepted_by_openssl(tmp_path: Path) -> None:
    now = datetime.now(UTC)  # openssl checks validity against the real clock
    ca = CertificateAuthority.create("Test CA", now=now)
    revoked = ca.issue_client(URI, now=now).certificate
    good = ca.issue_client(OTHER_TENANT, now=now).certificate
    crl = build_crl(ca, [RevokedEntry(revoked.serial_number, now - timedelta(minutes=1),
                                      x509.ReasonFlags.key_compromise),
                         RevokedEntry(12345678901234567890, now - timedelta(days=1))],
                    crl_number=7, now=now)
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem())
    (tmp_path / "crl.pem").write_bytes(crl_pem(crl))
    (tmp_path / "revoked.pem").write_bytes(revoked.public_bytes(pem))
    (tmp_path / "good.pem").write_bytes(good.public_bytes(pem))
    out = _openssl("crl", "-in", str(tmp_path / "crl.pem"), "-CAfile", str(tmp_path / "ca.pem"),
                   "-noout", "-verify")
    assert out.returncode == 0 and "verify OK" in out.stdout + out.stderr, out
    check = ["verify", "-crl_check", "-purpose", "sslclient", "-CAfile",
             str(tmp_path / "ca.pem"), "-CRLfile", str(tmp_path / "crl.pem")]
    out = _openssl(*check, str(tmp_path / "revoked.pem"))
    assert out.returncode != 0 and "revoked" in out.stdout + out.stderr, out
    out = _openssl(*check, str(tmp_path / "good.pem"))
    assert out.returncode == 0, out

    # Read back with cryptography: number, AKI, reasons, dates.
    back = x509.load_pem_x509_crl(crl_pem(crl))
    assert back.is_signature_valid(ca.key.public_key())
    assert back.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert back.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier) \
        .value.key_identifier == ca_ski.digest
    assert back.next_update_utc == now.replace(microsecond=0) + timedelta(hours=24)
    entry = back.get_revoked_certificate_by_serial_number(revoked.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is \
        x509.ReasonFlags.key_compromise
    plain = back.get_revoked_certificate_by_serial_number(12345678901234567890)
    assert plain is not None and len(plain.extensions) == 0
    assert back.get_revoked_certificate_by_serial_number(good.serial_number) is None


def test_empty_crl_verifies(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    ca = CertificateAuthority.create("Test CA", now=now)
    crl = build_crl(ca, [], crl_number=0, now=now)
    assert len(crl) == 0
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem())
    (tmp_path / "crl.pem").write_bytes(crl_pem(crl))
    out = _openssl("crl", "-in", str(tmp_path / "crl.pem"), "-CAfile", str(tmp_path / "ca.pem"),
                   "-noout", "-verify")
    assert out.returncode == 0 and "verify OK" in out.stdout + out.stderr, out
    good = ca.issue_client(URI, now=now).certificate
    (tmp_path / "good.pem").write_bytes(good.public_bytes(serialization.Encoding.PEM))
    out = _openssl("verify", "-crl_check", "-CAfile", str(tmp_path / "ca.pem"), "-CRLfile",
                   str(tmp_path / "crl.pem"), str(tmp_path / "good.pem"))
    assert out.returncode == 0, out


def test_crl_rejects_nonsense(ca: CertificateAuthority) -> None:
    with pytest.raises(ValueError, match="twice"):
        build_crl(ca, [RevokedEntry(5, NOW), RevokedEntry(5, NOW)], crl_number=1, now=NOW)
    with pytest.raises(ValueError, match="CRL number"):
        build_crl(ca, [], crl_number=-1, now=NOW)
    # "unspecified" is omitted rather than sent (RFC 5280 §5.3.1).
    crl = build_crl(ca, [RevokedEntry(5, NOW, x509.ReasonFlags.unspecified)], crl_number=1,
                    now=NOW)
    entry = crl.get_revoked_certificate_by_serial_number(5)
    assert entry is not None and len(entry.extensions) == 0
