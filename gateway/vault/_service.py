"""The gateway's own credentials at the shared systems.

Each upstream's service credential (a bearer token) lives in the vault as
``upstream/<name>/token``; the gateway injects it per request and nobody else
ever sees it. Rotation uses the upstream's two slots: the new token is added
at the upstream, then requests switch to it, then, once every request in
flight with the old one has finished, the old one is retired there and its
vault version destroyed. Rotation is scheduled by age (policy, default 90
days) and can be forced by the security team.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from gateway.clock import utc_now
from gateway.errors import UpstreamFailed
from gateway.metrics import GatewayMetrics
from gateway.upstream import UpstreamPool
from gateway.vault._errors import SecretNotFound
from gateway.vault._store import Vault

log = logging.getLogger("gateway.vault")
KIND = "upstream-token"


def token_id(upstream: str) -> str:
    return f"upstream/{upstream}/token"


def new_token() -> str:
    return "gw_" + secrets.token_urlsafe(32)


SCHEMES = ("bearer", "api-key", "basic", "mtls")


def identity_id(upstream: str) -> str:
    return f"upstream/{upstream}/client-cert"


def identity_uri(trust_domain: str, upstream: str) -> str:
    return f"spiffe://{trust_domain}/gateway/upstream/{upstream}"


def credential_header(scheme: str, token: str) -> tuple[str, str]:
    """How a shared system takes the gateway's credential."""
    if scheme == "api-key":
        return "X-Api-Key", token
    if scheme == "mtls":
        return "", ""  # the credential is the TLS client certificate, no header
    if scheme == "basic":
        return "Authorization", "Basic " + base64.b64encode(f"gateway:{token}".encode()).decode()
    return "Authorization", "Bearer " + token


class UpstreamCredentials:
    def __init__(self, vault: Vault, pool: UpstreamPool, metrics: GatewayMetrics, *,
                 max_age: timedelta = timedelta(days=90), grace_s: float = 10.0,
                 issue_identity: Callable[[str], tuple[bytes, bytes]] | None = None,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.vault = vault
        self.pool = pool
        self.metrics = metrics
        self.max_age = max_age
        self.grace_s = grace_s  # how long a request in flight may still use the old token
        self.clock = clock
        self._tokens: dict[str, str] = {}
        self._headers: dict[str, tuple[str, str]] = {}
        self.schemes = {name: up.credential for name, up in pool.upstreams.items()}
        self._rotating: set[str] = set()
        # Issues a client certificate for an mTLS upstream (the gateway's CA);
        # None: no CA of our own, so no mTLS upstream credential.
        self.issue_identity = issue_identity

    def load(self, upstreams: Iterable[str]) -> None:
        """Read every upstream's current token from the vault (at start)."""
        for name in upstreams:
            try:
                self._use(name, self.vault.get(token_id(name)).decode())
            except SecretNotFound:
                log.warning("no service credential for upstream %s in the vault", name)

    def provision(self, upstream: str) -> str:
        """First token of an upstream (demo set-up, or an operator's first run)."""
        token = new_token()
        self.vault.put(token_id(upstream), token.encode(), kind=KIND,
                       labels={"upstream": upstream})
        self._use(upstream, token)
        return token

    def _use(self, upstream: str, token: str) -> None:
        self._tokens[upstream] = token
        scheme = self.schemes.get(upstream, "bearer")
        if scheme == "mtls":
            self._headers.pop(upstream, None)
        else:
            self._headers[upstream] = credential_header(scheme, token)

    def client_identity(self, upstream: str) -> tuple[bytes, bytes] | None:
        """Certificate and key PEM for an upstream that takes mTLS (vault)."""
        if self.schemes.get(upstream) != "mtls":
            return None
        try:
            doc = json.loads(self.vault.get(identity_id(upstream)))
        except SecretNotFound:
            log.warning("no client certificate for upstream %s in the vault", upstream)
            return None
        return doc["cert"].encode(), doc["key"].encode()

    async def rotate_identity(self, upstream: str) -> int:
        """A new client certificate from the CA; new connections present it,
        connections in flight finish with the old one, whose version is then
        destroyed. The shared system trusts the CA and the identity, so both
        are valid during the overlap."""
        if self.issue_identity is None:
            raise UpstreamFailed(501, "no-ca")
        cert_pem, key_pem = self.issue_identity(upstream)
        meta = self.vault.put(identity_id(upstream), json.dumps(
            {"cert": cert_pem.decode(), "key": key_pem.decode()}).encode(), kind="client-cert",
            labels={"upstream": upstream})
        await self.pool.renew_session(upstream, self.grace_s)
        self.vault.delete_versions_before(identity_id(upstream), meta.version)
        return meta.version

    def header(self, upstream: str) -> tuple[str, str] | None:
        """The header to inject (hot path: a dict lookup)."""
        return self._headers.get(upstream)

    def admin_authorization(self, upstream: str) -> str:
        """The shared system's own admin API takes the token as a bearer."""
        token = self._tokens.get(upstream)
        return "" if token is None else "Bearer " + token

    async def rotate(self, upstream: str) -> int:
        """Rotate with two slots; returns the new vault version."""
        if upstream in self._rotating:
            raise UpstreamFailed(409, "rotation-in-progress")
        current = self._tokens.get(upstream)
        if current is None:
            raise UpstreamFailed(404, "no-credential")
        self._rotating.add(upstream)
        try:
            if self.schemes.get(upstream) == "mtls":
                return await self.rotate_identity(upstream)
            token = new_token()
            # 1. The upstream accepts the new token (authenticated with the old one).
            await self.pool.admin_call(upstream, "/_admin/credentials", {"add": token},
                                       "Bearer " + current)
            # 2. The vault keeps it; new requests use it from here on.
            meta = self.vault.put(token_id(upstream), token.encode(), kind=KIND,
                                  labels={"upstream": upstream})
            self._use(upstream, token)
            # 3. Requests in flight with the old token finish, then it is retired.
            await asyncio.sleep(self.grace_s)
            await self.pool.admin_call(upstream, "/_admin/credentials",
                                       {"retire": current}, "Bearer " + token)
            self.vault.delete_versions_before(token_id(upstream), meta.version)
            return meta.version
        finally:
            self._rotating.discard(upstream)

    def due(self) -> list[str]:
        now = self.clock()
        out = []
        for name in self._tokens:
            secret = identity_id(name) if self.schemes.get(name) == "mtls" else token_id(name)
            try:
                age = now - self.vault.meta(secret).created
            except SecretNotFound:
                continue
            self.metrics.vault_secret_age.labels(secret).set(age.total_seconds())
            if age >= self.max_age and name not in self._rotating:
                out.append(name)
        return out

    async def maintain(self) -> None:
        for name in self.due():
            try:
                await self.rotate(name)
                log.info("scheduled rotation of the %s service credential done", name)
            except UpstreamFailed as exc:
                log.error("scheduled rotation of %s failed (%s); retrying later", name,
                          exc.reason)
