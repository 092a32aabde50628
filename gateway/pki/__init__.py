"""The gateway's own PKI and the credential lifecycle (D6, D7): the
certificate authority, issuance from CSRs, CRLs and a profile lint, the
signing keys of the identity assertions and the assertions themselves, and
:class:`Credentials`, which issues, rotates and revokes without a restart.

May import: :mod:`gateway.edge` (to reload the server TLS material),
:mod:`gateway.audit`, :mod:`gateway.state`, :mod:`gateway.tenants` and the
foundation modules.
"""

from __future__ import annotations

from gateway.pki._assertion import (
    ASSERTION_HEADER,
    AssertionSigner,
    InvalidAssertion,
    JwksKeySource,
    KeySource,
    verify_assertion,
)
from gateway.pki._authority import CertificateAuthority, key_pem, spiffe_uri
from gateway.pki._issuance import IssuancePolicy, make_key_and_csr
from gateway.pki._lifecycle import Credentials
from gateway.pki._records import ADMIN_ROLES, AdminRefused, import_certificate, serial_hex
from gateway.pki._signing_keys import KeyRing

__all__ = [
    "ADMIN_ROLES",
    "ASSERTION_HEADER",
    "AdminRefused",
    "AssertionSigner",
    "CertificateAuthority",
    "Credentials",
    "InvalidAssertion",
    "IssuancePolicy",
    "JwksKeySource",
    "KeyRing",
    "KeySource",
    "import_certificate",
    "key_pem",
    "make_key_and_csr",
    "serial_hex",
    "spiffe_uri",
    "verify_assertion",
]
