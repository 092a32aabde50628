"""The development PKI under ``certs/dev/``.

Layout a person can find without reading code::

    certs/dev/ca.pem                  trust bundle (curl --cacert)
    certs/dev/ca.key                  dev CA key (0600)
    certs/dev/server/gateway.pem|key  gateway + simulators (localhost, 127.0.0.1, ::1)
    certs/dev/<tenant>/<name>.pem|key one client certificate per demo principal

Existing material is reused; missing or soon-expiring leaves are reissued.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from gateway.files import write_private
from gateway.pki import CertificateAuthority, spiffe_uri
from gateway.tenants import TenantRegistry

RENEW_BEFORE = timedelta(days=7)


@dataclass(frozen=True)
class DevPki:
    root: Path
    trust_domain: str

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server" / "gateway.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server" / "gateway.key"

    @property
    def push_cert(self) -> Path:
        """The gateway's own client certificate for delivering pushed data."""
        return self.root / "gateway" / "push.pem"

    @property
    def push_key(self) -> Path:
        return self.root / "gateway" / "push.key"

    @property
    def push_uri(self) -> str:
        return f"spiffe://{self.trust_domain}/gateway/push"

    def client_cert(self, tenant: str, name: str) -> Path:
        return self.root / tenant / f"{name}.pem"

    def client_key(self, tenant: str, name: str) -> Path:
        return self.root / tenant / f"{name}.key"

    def authority(self) -> CertificateAuthority:
        return CertificateAuthority.load(self.ca_cert, self.ca_key)


def _fresh(path: Path, now: datetime) -> bool:
    if not path.exists():
        return False
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.not_valid_after_utc - now > RENEW_BEFORE


def ensure_dev_pki(root: Path, registry: TenantRegistry, trust_domain: str,
                   now: datetime | None = None) -> DevPki:
    now = now or datetime.now(UTC)
    pki = DevPki(root, trust_domain)
    root.mkdir(parents=True, exist_ok=True)
    if pki.ca_cert.exists() and pki.ca_key.exists() and _fresh(pki.ca_cert, now):
        ca = pki.authority()
        renew_all = False
    else:
        ca = CertificateAuthority.create(f"Shared grid gateway dev CA ({trust_domain})", now=now)
        write_private(pki.ca_key, ca.key_pem())
        pki.ca_cert.write_bytes(ca.cert_pem())
        renew_all = True
    if renew_all or not _fresh(pki.server_cert, now):
        issued = ca.issue_server(["localhost"], ["127.0.0.1", "::1"], now=now)
        write_private(pki.server_key, issued.key_pem())
        pki.server_cert.write_bytes(issued.cert_pem())
    if renew_all or not _fresh(pki.push_cert, now):
        issued = ca.issue_client(pki.push_uri, now=now)
        write_private(pki.push_key, issued.key_pem())
        pki.push_cert.write_bytes(issued.cert_pem())
    for tenant in registry:
        for principal in tenant.principals.values():
            if not renew_all and _fresh(pki.client_cert(tenant.id, principal.name), now):
                continue
            reissue(pki, ca, tenant.id, principal.kind, principal.name, now)
    return pki


def reissue(pki: DevPki, ca: CertificateAuthority, tenant: str, kind: str, name: str,
            now: datetime | None = None) -> None:
    """A new key and certificate for one demo principal (e.g. after the demo's
    own revocation of the previous one)."""
    uri = spiffe_uri(pki.trust_domain, tenant, kind, name)
    issued = ca.issue_client(uri, now=now)
    write_private(pki.client_key(tenant, name), issued.key_pem())
    pki.client_cert(tenant, name).write_bytes(issued.cert_pem())
