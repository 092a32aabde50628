"""Credentials the simulated shared systems require.

- The gateway's *service credential* (a bearer token): every proxied request
  must carry one of the currently accepted tokens (two slots, so a rotation
  never fails a request in flight).
- *Privileged accounts* (``hes-admin``, ``itsm-support`` ...): the admin and
  support accounts people check out from the vault; ``GET /_admin/whoami``
  with Basic auth is what a person does with a checked-out password.

The shared system's own admin API (``/_admin/...``), authenticated with the
service credential, lets the gateway add a new token before retiring the old
one and set a new account password after a lease: the old one then fails.
Only digests are kept.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

ACCOUNTS = {"hes": "hes-admin", "clearing": "clearing-admin", "cmh": "cmh-admin",
            "itsm": "itsm-support"}


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass
class SimSecrets:
    service_tokens: list[bytes] = field(default_factory=list)  # digests, at most two
    accounts: dict[str, bytes] = field(default_factory=dict)  # account -> password digest
    # When set, the gateway's credential is its TLS client certificate (mTLS).
    client_uri: str | None = None

    @classmethod
    def initial(cls, service_token: str, accounts: dict[str, str],
                client_uri: str | None = None) -> SimSecrets:
        return cls([_digest(service_token)], {n: _digest(p) for n, p in accounts.items()},
                   client_uri)

    def token_ok(self, header: str | None) -> bool:
        """``Bearer <token>`` (also how the admin API authenticates)."""
        if not header or not header.startswith("Bearer "):
            return False
        return self._known(header[7:])

    def request_ok(self, headers: Mapping[str, str],
                   peercert: Mapping[str, Any] | None = None) -> bool:
        """The service credential in whichever form the gateway presents it:
        a bearer token, an API key header, basic auth as user ``gateway``, or
        (mTLS) its client certificate with the gateway's upstream identity."""
        if self.client_uri is not None:
            sans = peercert.get("subjectAltName", ()) if peercert else ()
            return [v for (k, v) in sans if k == "URI"] == [self.client_uri]
        auth = headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return self._known(auth[7:])
        if auth.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(auth[6:], validate=True).decode() \
                    .partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            return user == "gateway" and self._known(password)
        key = headers.get("X-Api-Key")
        return key is not None and self._known(key)

    def _known(self, token: str) -> bool:
        digest = _digest(token)
        return any(hmac.compare_digest(digest, t) for t in self.service_tokens)

    def account_ok(self, header: str | None) -> str | None:
        if not header or not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        stored = self.accounts.get(user)
        if stored is not None and hmac.compare_digest(stored, _digest(password)):
            return user
        return None


SECRETS = web.AppKey("sim_secrets", SimSecrets)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        doc = await request.json()
    except ValueError:
        doc = None
    return doc if isinstance(doc, dict) else {}


async def credentials(request: web.Request) -> web.Response:
    """``{"add": token}`` or ``{"retire": token}``, authenticated with a current token."""
    secrets = request.app[SECRETS]
    if not secrets.token_ok(request.headers.get("Authorization")):
        return _json({"error": "invalid-credential"}, 401)
    doc = await _body(request)
    if isinstance(doc.get("add"), str) and doc["add"]:
        digest = _digest(doc["add"])
        if digest not in secrets.service_tokens:
            secrets.service_tokens = [*secrets.service_tokens, digest][-2:]
        return _json({"accepted": len(secrets.service_tokens)})
    if isinstance(doc.get("retire"), str):
        digest = _digest(doc["retire"])
        remaining = [t for t in secrets.service_tokens if not hmac.compare_digest(t, digest)]
        if not remaining:
            return _json({"error": "last-credential"}, 409)
        secrets.service_tokens = remaining
        return _json({"accepted": len(remaining)})
    return _json({"error": "bad-request"}, 400)


async def set_password(request: web.Request) -> web.Response:
    secrets = request.app[SECRETS]
    if not secrets.token_ok(request.headers.get("Authorization")):
        return _json({"error": "invalid-credential"}, 401)
    name = request.match_info["account"]
    doc = await _body(request)
    if name not in secrets.accounts:
        return _json({"error": "unknown-account"}, 404)
    if not isinstance(doc.get("password"), str) or len(doc["password"]) < 16:
        return _json({"error": "weak-password"}, 400)
    secrets.accounts[name] = _digest(doc["password"])
    return _json({"account": name, "rotated": True})


async def whoami(request: web.Request) -> web.Response:
    user = request.app[SECRETS].account_ok(request.headers.get("Authorization"))
    if user is None:
        return _json({"error": "invalid-account-credential"}, 401)
    return _json({"account": user, "privileges": "admin"})


def install(app: web.Application, secrets: SimSecrets) -> None:
    app[SECRETS] = secrets
    app.router.add_post("/_admin/credentials", credentials)
    app.router.add_post("/_admin/accounts/{account}/password", set_password)
    app.router.add_get("/_admin/whoami", whoami)
