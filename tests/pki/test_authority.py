"""The project's PKI: RFC 5280 profile of what it issues, dev layout."""

from __future__ import annotations

import stat
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.demo._devpki import ensure_dev_pki
from gateway.pki._authority import CertificateAuthority, principal_uri, spiffe_uri
from gateway.tenants import load_tenants

REPO = Path(__file__).resolve().parents[2]


def test_client_certificate_profile() -> None:
    ca = CertificateAuthority.create("Test CA")
    uri = spiffe_uri("shared-grid.test", "ores", "service", "api")
    cert = ca.issue_client(uri).certificate
    ext = cert.extensions
    assert principal_uri(cert) == uri
    assert ext.get_extension_for_class(x509.ExtendedKeyUsage).value == \
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest and ski.digest
    assert cert.serial_number.bit_length() > 64  # serial entropy
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert life.days <= 31  # short-lived by default
    cert.verify_directly_issued_by(ca.certificate)


def test_serials_are_unique() -> None:
    ca = CertificateAuthority.create("Test CA")
    serials = {ca.issue_client(f"spiffe://t/tenant/a/service/s{i}").certificate.serial_number
               for i in range(20)}
    assert len(serials) == 20


def test_dev_pki_layout_and_modes(tmp_path: Path) -> None:
    reg = load_tenants(REPO / "tenants")
    pki = ensure_dev_pki(tmp_path / "dev", reg, "shared-grid.test")
    assert (tmp_path / "dev" / "ca.pem").exists()
    for tenant in reg:
        for p in tenant.principals.values():
            cert = pki.client_cert(tenant.id, p.name)
            key = pki.client_key(tenant.id, p.name)
            assert cert == tmp_path / "dev" / tenant.id / f"{p.name}.pem"
            assert stat.S_IMODE(key.stat().st_mode) == 0o600
            loaded = x509.load_pem_x509_certificate(cert.read_bytes())
            assert principal_uri(loaded) == spiffe_uri("shared-grid.test", tenant.id, p.kind,
                                                       p.name)
    assert stat.S_IMODE(pki.ca_key.stat().st_mode) == 0o600
    # openssl agrees with the chain and the purpose.
    out = subprocess.run(["openssl", "verify", "-purpose", "sslclient", "-CAfile",
                          str(pki.ca_cert), str(pki.client_cert("ores", "api"))],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    # A second run reuses what is there.
    before = pki.client_cert("ores", "api").read_bytes()
    ensure_dev_pki(tmp_path / "dev", reg, "shared-grid.test", now=datetime.now(UTC))
    assert pki.client_cert("ores", "api").read_bytes() == before
