"""The credential actions of the admin plane (D6, D7): certificates,
principals, signing keys, the CA, the server certificate and the vault's
rekey.

Two halves, so dual control can sit between them:

- the *handlers* (one per route) read and check the request, ask
  :class:`gateway.admin._duties.DualControl` for its ruling and either act or
  leave a pending action (202);
- the *executors* (:func:`credential_executors`) do what an action does once
  it may be done: at once for one admin, or when a second security admin
  approves, with exactly the parameters the requester gave.

Routes (registered in this order by :func:`credential_routes`; each goes
through ``guarded()`` of :func:`gateway.admin._app.build_admin_app`):

=====================================================  ===================  ===============
route                                                  action               roles
=====================================================  ===================  ===============
``GET /admin/certs``                                   ``certs-list``       admin, auditor
``POST /admin/certs``                                  ``certs-issue``      admin
``POST /admin/certs/{serial}/rotate``                  ``certs-rotate``     admin
``POST /admin/certs/{serial}/revoke``                  ``certs-revoke``     admin
``POST /admin/principals/{tenant}/{kind}/{name}/...``  ``principal-*``      admin
``GET /admin/review``                                  ``review``           admin, auditor
``POST /admin/keys/rotate``                            ``keys-rotate``      admin
``GET /admin/keys``                                    ``keys-list``        admin, auditor
``POST /admin/ca/rotate``                              ``ca-rotate``        admin
``POST /admin/tls/server/rotate``                      ``server-rotate``    admin
``POST /admin/vault/rekey`` (with a vault)             ``vault-rekey``      admin
=====================================================  ===================  ===============
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from aiohttp import web

from gateway.admin._duties import DualControl, Executor
from gateway.admin._request import CALLER, Body, Guard, RouteSet, _seconds, _text, person_of
from gateway.pki import ADMIN_ROLES, AdminRefused, Credentials
from gateway.state import CertificateRecord, PrincipalKey
from gateway.vault import RekeyProgress

ADMIN = "security-admin"
AUDITOR = "auditor"


def cert_json(rec: CertificateRecord) -> dict[str, Any]:
    return {"serial": rec.serial, "tenant": rec.tenant, "kind": rec.kind, "name": rec.name,
            "status": rec.status, "not_before": rec.not_before.isoformat(),
            "not_after": rec.not_after.isoformat(), "fingerprint": rec.fingerprint,
            "replaces": rec.replaces,
            "retire_at": rec.retire_at.isoformat() if rec.retire_at else None,
            "revoked_at": rec.revoked_at.isoformat() if rec.revoked_at else None,
            "revoke_reason": rec.revoke_reason, "certificate": rec.pem}


def credential_executors(creds: Credentials,
                         rekey: Callable[[], int] | None = None) -> dict[str, Executor]:
    """What each dual-controlled action does, once it may be done."""
    async def do_issue(p: Body, actor: str, reason: str) -> Any:
        lifetime = timedelta(seconds=p["lifetime_s"]) if p.get("lifetime_s") else None
        return cert_json(creds.issue((p["tenant"], p["kind"], p["name"]),
                                     p["csr"].encode(), lifetime))

    async def do_rotate(p: Body, actor: str, reason: str) -> Any:
        overlap = timedelta(seconds=p["overlap_s"]) if p.get("overlap_s") else None
        lifetime = timedelta(seconds=p["lifetime_s"]) if p.get("lifetime_s") else None
        return cert_json(creds.rotate(p["serial"], p["csr"].encode(), overlap, lifetime))

    async def do_enable(p: Body, actor: str, reason: str) -> Any:
        key = (p["tenant"], p["kind"], p["name"])
        creds.set_disabled(key, False, actor, reason)
        return {"principal": "/".join(key), "disabled": False}

    async def do_disable(p: Body, actor: str, reason: str) -> Any:
        key = (p["tenant"], p["kind"], p["name"])
        revoked = creds.set_disabled(key, True, actor, reason)
        ended = [await hook(key) for hook in creds.on_disable]
        return {"principal": "/".join(key), "disabled": True, "revoked": revoked,
                "leases_ended": [case for cases in ended for case in cases]}

    async def do_ca_rotate(p: Body, actor: str, reason: str) -> Any:
        overlap = timedelta(seconds=p.get("overlap_s") or 7 * 86400)
        rec = creds.rotate_ca(overlap)
        return {"ca": rec.id, "certificate": rec.cert_pem,
                "old_ca_retires_in_s": overlap.total_seconds()}

    async def do_rekey(p: Body, actor: str, reason: str) -> Any:
        if rekey is None:
            raise AdminRefused(501, "no-vault", "this gateway has no vault")
        # One unwrap and wrap per data key: off the event loop, so the planes
        # keep serving and GET /admin/vault/rekey can tell how far it is.
        return {"rewrapped": await asyncio.to_thread(rekey)}

    return {"certs-issue": do_issue, "certs-rotate": do_rotate, "principal-enable": do_enable,
            "principal-disable": do_disable, "ca-rotate": do_ca_rotate,
            "vault-rekey": do_rekey}


def principal_of(request: web.Request) -> PrincipalKey:
    m = request.match_info
    return (m["tenant"], m["kind"], m["name"])


def target_of(request: web.Request) -> str:
    """What a pending action names as its target (its audit event's target)."""
    m = request.match_info
    if "serial" in m:
        return m["serial"]
    if "name" in m:
        return "/".join(principal_of(request))
    return request.path


def _secs(doc: Body, key: str, unit: float = 1.0) -> float | None:
    value = _seconds(doc, key, unit)
    return value.total_seconds() if value else None


def review_csv(rows: list[dict[str, Any]]) -> str:
    """The access review as CSV, one row per principal."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["tenant", "tenant_kind", "principal_kind", "principal", "team", "roles",
                     "admin_grants", "disabled", "certificates", "last_used",
                     "two_person"])
    for r in rows:
        certs = ";".join(f"{c['serial']}:{c['status']}:{c['not_after']}"
                         for c in r["certificates"])
        dual = ";".join(f"{d['serial']}:{d['requested_by']}:{d['approved_by']}"
                        for d in r["two_person"])
        writer.writerow([r["tenant"], r["tenant_kind"], r["principal_kind"], r["principal"],
                         r["team"], " ".join(r["roles"]), " ".join(r["admin_grants"]),
                         "yes" if r["disabled"] else "no", certs, r["last_used"] or "",
                         dual])
    return out.getvalue()


def credential_routes(creds: Credentials, duties: DualControl, *, with_vault: bool,
                      rekey_progress: Callable[[], RekeyProgress] | None = None) -> RouteSet:
    """The credential routes (a :data:`gateway.admin._request.RouteSet`);
    ``POST /admin/vault/rekey`` only ``with_vault``."""
    async def gate(request: web.Request, action: str, principal: PrincipalKey | None,
                   params: Body, doc: Body) -> Any:
        return await duties.gate(action, person_of(request[CALLER]), target_of(request),
                                 principal, params, doc.get("reason", ""))

    async def issue(request: web.Request, doc: Body) -> Any:
        principal = (_text(doc, "tenant"), _text(doc, "kind"), _text(doc, "name"))
        lifetime = _secs(doc, "lifetime_days", 86400)
        csr = _text(doc, "csr")
        duties.rule("certs-issue", person_of(request[CALLER]), principal)
        creds.check_issuable(principal, csr.encode(),
                             timedelta(seconds=lifetime) if lifetime else None)
        return await gate(request, "certs-issue", principal,
                          {"tenant": principal[0], "kind": principal[1],
                           "name": principal[2], "csr": csr, "lifetime_s": lifetime}, doc)

    async def rotate(request: web.Request, doc: Body) -> Any:
        serial_ = request.match_info["serial"]
        old = creds.store.certificate(serial_)
        if old is None or old.status != "active":
            raise AdminRefused(404, "unknown-certificate", f"no active certificate {serial_}")
        csr = _text(doc, "csr")
        lifetime = _secs(doc, "lifetime_days", 86400)
        duties.rule("certs-rotate", person_of(request[CALLER]), old.principal)
        creds.check_issuable(old.principal, csr.encode(),
                             timedelta(seconds=lifetime) if lifetime else None)
        return await gate(request, "certs-rotate", old.principal,
                          {"serial": serial_, "csr": csr, "overlap_s": _secs(doc, "overlap_s"),
                           "lifetime_s": lifetime}, doc)

    async def revoke(request: web.Request, doc: Body) -> Any:
        code = doc.get("code", "unspecified")
        if not isinstance(code, str):
            raise AdminRefused(400, "field-invalid", "code must be a string")
        return cert_json(creds.revoke(request.match_info["serial"], code))

    async def list_certs(request: web.Request, doc: Body) -> Any:
        recs = creds.store.certificates(status=request.query.get("status"))
        tenant = request.query.get("tenant")
        return {"certificates": [cert_json(r) for r in recs if not tenant or r.tenant == tenant]}

    def principal_params(request: web.Request) -> Body:
        key = principal_of(request)
        return {"tenant": key[0], "kind": key[1], "name": key[2]}

    async def disable(request: web.Request, doc: Body) -> Any:
        _text(doc, "reason")
        return await gate(request, "principal-disable", principal_of(request),
                          principal_params(request), doc)

    async def enable(request: web.Request, doc: Body) -> Any:
        _text(doc, "reason")
        return await gate(request, "principal-enable", principal_of(request),
                          principal_params(request), doc)

    async def review(request: web.Request, doc: Body) -> Any:
        rows = creds.review()
        if request.query.get("format") != "csv":
            return {"principals": rows}
        return web.Response(text=review_csv(rows), content_type="text/csv")

    async def keys_rotate(request: web.Request, doc: Body) -> Any:
        return {"kid": creds.rotate_signing_key()}

    async def keys_list(request: web.Request, doc: Body) -> Any:
        ring = creds.keyring
        now = ring.clock()
        current = ring.current(now).kid
        return {"keys": [{"kid": k.kid, "created": k.created.isoformat(),
                          "activate_at": k.activate_at.isoformat(),
                          "unpublish_at": k.unpublish_at.isoformat() if k.unpublish_at else None,
                          "signing": k.kid == current} for k in ring.published(now)]}

    async def ca_rotate(request: web.Request, doc: Body) -> Any:
        creds.active_ca()  # 501 at once without a CA, not after an approval
        return await gate(request, "ca-rotate", None, {"overlap_s": _secs(doc, "overlap_s")},
                          doc)

    async def rekey_state(request: web.Request, doc: Body) -> Any:
        if rekey_progress is None:
            raise AdminRefused(501, "no-vault", "this gateway has no vault")
        return rekey_progress().as_json()

    async def vault_rekey(request: web.Request, doc: Body) -> Any:
        return await gate(request, "vault-rekey", None, {}, doc)

    async def server_rotate(request: web.Request, doc: Body) -> Any:
        return cert_json(creds.rotate_server_certificate())

    admin_or_auditor = frozenset({ADMIN, AUDITOR})
    admin = frozenset({ADMIN})
    assert admin_or_auditor <= ADMIN_ROLES

    def path(request: web.Request) -> str:
        return request.path

    def serial(request: web.Request) -> str:
        return request.match_info["serial"]

    def principal_target(request: web.Request) -> str:
        return "/".join(principal_of(request))

    def register(r: web.UrlDispatcher, guarded: Guard) -> None:
        r.add_get("/admin/certs", guarded("certs-list", admin_or_auditor, path, list_certs,
                                          write=False))
        r.add_post("/admin/certs", guarded("certs-issue", admin, path, issue))
        r.add_post("/admin/certs/{serial}/rotate",
                   guarded("certs-rotate", admin, serial, rotate))
        r.add_post("/admin/certs/{serial}/revoke",
                   guarded("certs-revoke", admin, serial, revoke))
        r.add_post("/admin/principals/{tenant}/{kind}/{name}/disable",
                   guarded("principal-disable", admin, principal_target, disable))
        r.add_post("/admin/principals/{tenant}/{kind}/{name}/enable",
                   guarded("principal-enable", admin, principal_target, enable))
        r.add_get("/admin/review", guarded("review", admin_or_auditor, path, review,
                                           write=False))
        r.add_post("/admin/keys/rotate", guarded("keys-rotate", admin, path, keys_rotate))
        r.add_get("/admin/keys", guarded("keys-list", admin_or_auditor, path, keys_list,
                                         write=False))
        r.add_post("/admin/ca/rotate", guarded("ca-rotate", admin, path, ca_rotate))
        r.add_post("/admin/tls/server/rotate",
                   guarded("server-rotate", admin, path, server_rotate))
        if with_vault:
            r.add_post("/admin/vault/rekey", guarded("vault-rekey", admin, path, vault_rekey))
            r.add_get("/admin/vault/rekey", guarded("vault-rekey-progress", admin_or_auditor, path,
                                                    rekey_state, write=False))
    return register
