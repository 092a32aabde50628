"""From a verified TLS peer to a :class:`Caller` (tenant + principal).

The handshake already proved the certificate chains to the trust bundle and
is within its validity (``CERT_REQUIRED``). Here the URI SAN is mapped to a
declared principal; anything unknown is refused before any routing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.core.model import Caller
from gateway.edge._peer import Peers, PerConnection
from gateway.edge._request import HttpRequest
from gateway.errors import RequestRefused
from gateway.tenants import TenantRegistry

# Why a certificate may not be used now (revoked, principal disabled), or None.
RevocationCheck = Callable[[str, tuple[str, str, str]], "str | None"]


class CredentialRefused(RequestRefused):
    """A certificate that names a declared principal but may not be used now
    (revoked, principal disabled). Unlike an unknown certificate, who it is
    is known, and the audit and the SOC must say so (D8, D12)."""

    def __init__(self, reason: str, caller: Caller) -> None:
        super().__init__(403, reason)
        self.caller = caller


def _never_revoked(serial: str, principal: tuple[str, str, str]) -> str | None:
    return None


class CallerResolver:
    def __init__(self, registry: TenantRegistry, trust_domain: str,
                 revocation: RevocationCheck = _never_revoked, *,
                 peers: Peers | None = None) -> None:
        self.registry = registry
        self.revocation = revocation
        # The certificates, read once per connection (shared with the
        # connection book when the server passes the same Peers to both).
        self.peers = peers or Peers(trust_domain)
        # One TLS connection carries one certificate: resolve it once per
        # connection (keep-alive) rather than once per request.
        self._by_connection: PerConnection[Caller] = PerConnection("caller")

    def replace_registry(self, registry: TenantRegistry) -> None:
        """New tenant declarations; connections re-resolve their caller."""
        self.registry = registry
        self._by_connection.clear()

    def resolve(self, request: HttpRequest) -> Caller:
        transport = request.transport
        if transport is None:
            raise RequestRefused(403, "no-transport")
        caller = self._by_connection.get(transport)
        if caller is None:
            caller = self._resolve(transport)
            self._by_connection.set(transport, caller)
        # SECURITY: checked on every request, so a revocation or a leaver's
        # disabling also ends keep-alive connections opened before it.
        refused = self.revocation(caller.cert_serial, caller.principal.key)
        if refused is not None:
            raise CredentialRefused(refused, caller)
        return caller

    def _resolve(self, transport: Any) -> Caller:
        peer = self.peers.of(transport)
        if peer.principal is None:
            raise RequestRefused(403, peer.refusal or "no-client-certificate")
        found = self.registry.principal(*peer.principal)
        if found is None:
            raise RequestRefused(403, "unknown-principal")
        tenant, principal = found
        return Caller(tenant, principal, cert_serial=peer.serial,
                      cert_fingerprint=peer.fingerprint)
