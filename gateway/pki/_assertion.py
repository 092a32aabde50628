"""Signed identity assertions from the gateway to the shared systems.

Every proxied request carries ``X-Gateway-Assertion: <JWT>``: an EdDSA
(Ed25519) token with a ``kid``, ``aud`` = the upstream's name, the tenant and
principal, valid a few minutes. Upstreams verify it against the gateway's
JWKS (``/.well-known/jwks.json`` on the ops plane) and refuse requests
without a valid one, so a shared system cannot be reached around the gateway.

Signing is the expensive part (~50 µs), so a token is reused per
(tenant, principal, upstream) for most of its lifetime.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jwt

from gateway.core.model import Caller
from gateway.errors import RequestRefused
from gateway.pki._signing_keys import SigningKey

ASSERTION_HEADER = "X-Gateway-Assertion"
ISSUER = "shared-grid-gateway"
ALGORITHM = "EdDSA"


class InvalidAssertion(RequestRefused):
    """The assertion is missing, malformed, expired, or not signed by us: the
    shared system refuses the call (401); the message names what is wrong."""

    def __init__(self, problem: str) -> None:
        super().__init__(401, "invalid-assertion", detail=problem)
        self.problem = problem

    def __str__(self) -> str:
        return self.problem


class KeyProvider(Protocol):
    def current(self) -> SigningKey: ...
    def published(self) -> tuple[SigningKey, ...]: ...


class StaticKeys:
    """One fixed key (tests, tools); the gateway uses :class:`gateway.pki._signing_keys.KeyRing`."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key

    def current(self) -> SigningKey:
        return self.key

    def published(self) -> tuple[SigningKey, ...]:
        return (self.key,)


def public_jwk(key: SigningKey) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(
        jwt.algorithms.OKPAlgorithm.to_jwk(key.private_key.public_key()))
    jwk.update({"kid": key.kid, "use": "sig", "alg": ALGORITHM})
    return jwk


class AssertionSigner:
    """Signs assertions with the current key; publishes every key it knows."""

    def __init__(self, keys: KeyProvider | SigningKey, *, lifetime_s: int = 300,
                 clock: Callable[[], float] = time.time) -> None:
        self.keys: KeyProvider = StaticKeys(keys) if isinstance(keys, SigningKey) else keys
        self.lifetime_s = lifetime_s
        # Re-sign once 80 % of the lifetime is gone, so a token an upstream
        # receives always has at least 20 % (a minute by default) left.
        self._reuse_s = lifetime_s * 0.8
        self._clock = clock
        self._cache: dict[tuple[str, ...], tuple[float, str]] = {}

    def assertion(self, caller: Caller, upstream: str) -> str:
        now = self._clock()
        p = caller.principal
        signing = self.keys.current()
        # The kid is part of the key: after a rotation the next request signs anew.
        key = (caller.tenant.id, p.kind, p.name, upstream, signing.kid,
               caller.cert_fingerprint)
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self._reuse_s:
            return hit[1]
        token = self._sign(signing, caller, upstream, int(now))
        if len(self._cache) > 10_000:  # bounded: tenants x principals x upstreams
            self._cache.clear()
        self._cache[key] = (now, token)
        return token

    def forget_cached(self) -> None:
        self._cache.clear()

    def _sign(self, signing: SigningKey, caller: Caller, upstream: str, now: int) -> str:
        p = caller.principal
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": upstream,
            "sub": f"tenant/{caller.tenant.id}/{p.kind}/{p.name}",
            "tenant": caller.tenant.id,
            "tenant_kind": caller.tenant.kind,
            "principal": f"{p.kind}/{p.name}",
            "roles": sorted(p.roles),
            "iat": now,
            "nbf": now - 5,
            "exp": now + self.lifetime_s,
        }
        if caller.cert_fingerprint:
            # RFC 8705 §3.1: bound to the client certificate the caller presented.
            thumb = base64.urlsafe_b64encode(bytes.fromhex(caller.cert_fingerprint))
            claims["cnf"] = {"x5t#S256": thumb.rstrip(b"=").decode()}
        return jwt.encode(claims, signing.private_key, algorithm=ALGORITHM,
                          headers={"kid": signing.kid})

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(k) for k in self.keys.published()]}


# --------------------------------------------------------------------------
# Verification side, used by the simulated shared systems.


class KeySource(Protocol):
    async def key(self, kid: str) -> Any | None: ...


class StaticKeySource:
    """Keys from a JWKS document held in memory."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self._keys = {k["kid"]: jwt.PyJWK(dict(k)) for k in jwks.get("keys", [])}

    async def key(self, kid: str) -> Any | None:
        return self._keys.get(kid)


class JwksKeySource:
    """Fetches the gateway's JWKS over HTTP and refetches on an unknown
    ``kid`` (at most once a second), so upstreams follow key rotation."""

    def __init__(self, url: str, *, min_refresh_s: float = 1.0) -> None:
        self.url = url
        self._keys: dict[str, Any] = {}
        self._last_fetch = 0.0
        self._min_refresh_s = min_refresh_s
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> Any | None:
        if kid in self._keys:
            return self._keys[kid]
        async with self._lock:
            if kid not in self._keys:
                # Rate-limited, but a valid new kid is waited for rather than
                # refused: right after a rotation the next fetch knows it.
                wait = self._min_refresh_s - (time.monotonic() - self._last_fetch)
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._fetch()
        return self._keys.get(kid)

    async def _fetch(self) -> None:
        import aiohttp  # the pure parts of this module need no aiohttp

        self._last_fetch = time.monotonic()
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as s, \
                    s.get(self.url) as resp:
                if resp.status != 200:
                    return
                doc = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return
        self._keys = {k["kid"]: jwt.PyJWK(k) for k in doc.get("keys", []) if "kid" in k}


async def verify_assertion(token: str | None, keys: KeySource, audience: str) -> dict[str, Any]:
    """Verify an assertion for ``audience``; returns its claims."""
    if not token:
        raise InvalidAssertion("missing")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise InvalidAssertion("malformed") from exc
    kid = header.get("kid")
    if header.get("alg") != ALGORITHM or not isinstance(kid, str):
        raise InvalidAssertion("bad-header")
    key = await keys.key(kid)
    if key is None:
        raise InvalidAssertion("unknown-kid")
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=[ALGORITHM], audience=audience, issuer=ISSUER,
            options={"require": ["exp", "iat", "aud", "iss", "sub"]}, leeway=5)
    except jwt.PyJWTError as exc:
        raise InvalidAssertion(type(exc).__name__) from exc
    if not isinstance(claims.get("tenant"), str):
        raise InvalidAssertion("no-tenant")
    return claims
