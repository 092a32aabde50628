"""The admin plane (issue 3): a JSON API on its own mTLS listener, for the
security team's principals only. Every call, refused or done, is audited with
actor, action, target and reason.

Roles (declared per principal in ``tenants/``):

- ``security-admin``: issue, rotate and revoke certificates, disable and
  re-enable principals, rotate the CA, the server certificate, signing keys;
- ``auditor``: read the certificate list, the signing keys and the access review.

Segregation of duties (D6): nobody issues, rotates or re-enables their own
credentials.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from aiohttp import web

from gateway.credentials import ADMIN_ROLES, AdminRefused, Credentials
from gateway.errors import RequestRefused
from gateway.identity import CallerResolver
from gateway.metrics import GatewayMetrics
from gateway.problem import CONTENT_TYPE, new_incident_id, problem_body
from gateway.state import CertificateRecord

ADMIN = "security-admin"
AUDITOR = "auditor"
CALLER: web.RequestKey[Any] = web.RequestKey("caller", object)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def hide_banner(_: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = "gateway"  # no version banner


@web.middleware
async def headers_arrived(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The header-read deadline of the connection is met (gateway.edge)."""
    protocol = request.protocol
    started = getattr(protocol, "gw_request_started", None)
    if started is not None:
        started()
    try:
        return await handler(request)
    finally:
        done = getattr(protocol, "gw_request_done", None)
        if done is not None:
            done()


def _problem(status: int, detail: str) -> web.Response:
    slug = {400: "bad-request", 403: "forbidden", 404: "not-found", 409: "bad-request",
            422: "bad-request", 501: "not-implemented"}.get(status, "internal-error")
    return web.Response(status=status, content_type=CONTENT_TYPE, headers={"Server": "gateway"},
                        body=problem_body(status, new_incident_id(), slug, detail))


def _cert_json(rec: CertificateRecord) -> dict[str, Any]:
    return {"serial": rec.serial, "tenant": rec.tenant, "kind": rec.kind, "name": rec.name,
            "status": rec.status, "not_before": rec.not_before.isoformat(),
            "not_after": rec.not_after.isoformat(), "fingerprint": rec.fingerprint,
            "replaces": rec.replaces,
            "retire_at": rec.retire_at.isoformat() if rec.retire_at else None,
            "revoked_at": rec.revoked_at.isoformat() if rec.revoked_at else None,
            "revoke_reason": rec.revoke_reason, "certificate": rec.pem}


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > 64 * 1024:
        raise AdminRefused(413, "body-too-large", "request body over 64 KiB")
    try:
        doc = json.loads(await request.read() or b"{}")
    except ValueError as exc:
        raise AdminRefused(400, "body-malformed-json", "the body must be a JSON object") from exc
    if not isinstance(doc, dict):
        raise AdminRefused(400, "body-not-object", "the body must be a JSON object")
    return doc


def _text(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise AdminRefused(400, "field-missing",
                           f"field {key!r} (a non-empty string) is required")
    return value


def _seconds(doc: dict[str, Any], key: str, unit: float = 1.0) -> timedelta | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise AdminRefused(400, "field-invalid", f"field {key!r} must be a positive number")
    return timedelta(seconds=float(value) * unit)


Body = dict[str, Any]
Action = Callable[[web.Request, Body], Awaitable[Any]]
Guard = Callable[..., Handler]  # guarded(action, roles, target, fn, *, write=True)
RouteSet = Callable[[web.UrlDispatcher, Guard], None]


def build_admin_app(creds: Credentials, resolver: CallerResolver,
                    metrics: GatewayMetrics, extra: RouteSet | None = None
                    ) -> web.Application:
    def actor_of(request: web.Request) -> str:
        c = request[CALLER]
        return f"{c.tenant.id}/{c.principal.kind}/{c.principal.name}"

    def guarded(action: str, roles: frozenset[str], target: Callable[[web.Request], str],
                fn: Callable[[web.Request, dict[str, Any]], Awaitable[Any]],
                *, write: bool = True) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                caller = resolver.resolve(request)
            except RequestRefused as exc:
                creds.record_admin_event("unknown", action, request.path, "", "refused", exc.reason)
                metrics.admin_actions.labels(action, "refused").inc()
                return _problem(403, "the client certificate is not an admin principal")
            request[CALLER] = caller
            actor = actor_of(request)
            if not roles & caller.principal.roles:
                creds.record_admin_event(actor, action, target(request), "", "refused",
                                         "missing-role")
                metrics.admin_actions.labels(action, "refused").inc()
                return _problem(403, f"this action needs one of: {', '.join(sorted(roles))}")
            try:
                doc = await _body(request) if write else {}
                reason = doc.get("reason", "") if write else "read"
                if not isinstance(reason, str):
                    raise AdminRefused(400, "field-invalid", "reason must be a string")

                async def call() -> Any:
                    return await fn(request, doc)

                result = await _run(creds, actor, action, target(request), reason, call)
            except AdminRefused as exc:
                metrics.admin_actions.labels(action, "refused").inc()
                return _problem(exc.status, exc.detail)
            metrics.admin_actions.labels(action, "done").inc()
            if isinstance(result, web.StreamResponse):
                return result
            created = action.endswith("issue") or action == "breakglass-request"
            return web.json_response(result, status=201 if created else 200)
        return handler

    def self_check(request: web.Request, principal: tuple[str, str, str]) -> None:
        c = request[CALLER]
        if principal == c.principal.key:
            raise AdminRefused(403, "self-service-refused",
                               "segregation of duties: another admin must do this (D6)")

    # -- handlers ----------------------------------------------------------
    async def issue(request: web.Request, doc: dict[str, Any]) -> Any:
        principal = (_text(doc, "tenant"), _text(doc, "kind"), _text(doc, "name"))
        self_check(request, principal)
        rec = creds.issue(principal, _text(doc, "csr").encode(),
                          _seconds(doc, "lifetime_days", 86400))
        return _cert_json(rec)

    async def rotate(request: web.Request, doc: dict[str, Any]) -> Any:
        old = creds.store.certificate(request.match_info["serial"])
        if old is not None:
            self_check(request, old.principal)
        rec = creds.rotate(request.match_info["serial"], _text(doc, "csr").encode(),
                           _seconds(doc, "overlap_s"), _seconds(doc, "lifetime_days", 86400))
        return _cert_json(rec)

    async def revoke(request: web.Request, doc: dict[str, Any]) -> Any:
        code = doc.get("code", "unspecified")
        if not isinstance(code, str):
            raise AdminRefused(400, "field-invalid", "code must be a string")
        return _cert_json(creds.revoke(request.match_info["serial"], code))

    async def list_certs(request: web.Request, doc: dict[str, Any]) -> Any:
        recs = creds.store.certificates(status=request.query.get("status"))
        tenant = request.query.get("tenant")
        return {"certificates": [_cert_json(r) for r in recs if not tenant or r.tenant == tenant]}

    def principal_of(request: web.Request) -> tuple[str, str, str]:
        m = request.match_info
        return (m["tenant"], m["kind"], m["name"])

    async def disable(request: web.Request, doc: dict[str, Any]) -> Any:
        key = principal_of(request)
        revoked = creds.set_disabled(key, True, actor_of(request), _text(doc, "reason"))
        ended = [await hook(key) for hook in creds.on_disable]
        return {"principal": "/".join(key), "disabled": True, "revoked": revoked,
                "leases_ended": [case for cases in ended for case in cases]}

    async def enable(request: web.Request, doc: dict[str, Any]) -> Any:
        key = principal_of(request)
        self_check(request, key)
        creds.set_disabled(key, False, actor_of(request), _text(doc, "reason"))
        return {"principal": "/".join(key), "disabled": False}

    async def review(request: web.Request, doc: dict[str, Any]) -> Any:
        rows = creds.review()
        if request.query.get("format") != "csv":
            return {"principals": rows}
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["tenant", "tenant_kind", "principal_kind", "principal", "team", "roles",
                         "admin_grants", "disabled", "certificates", "last_used"])
        for r in rows:
            certs = ";".join(f"{c['serial']}:{c['status']}:{c['not_after']}"
                             for c in r["certificates"])
            writer.writerow([r["tenant"], r["tenant_kind"], r["principal_kind"], r["principal"],
                             r["team"], " ".join(r["roles"]), " ".join(r["admin_grants"]),
                             "yes" if r["disabled"] else "no", certs, r["last_used"] or ""])
        return web.Response(text=out.getvalue(), content_type="text/csv")

    async def keys_rotate(request: web.Request, doc: dict[str, Any]) -> Any:
        return {"kid": creds.rotate_signing_key()}

    async def keys_list(request: web.Request, doc: dict[str, Any]) -> Any:
        ring = creds.keyring
        now = ring.clock()
        current = ring.current(now).kid
        return {"keys": [{"kid": k.kid, "created": k.created.isoformat(),
                          "activate_at": k.activate_at.isoformat(),
                          "unpublish_at": k.unpublish_at.isoformat() if k.unpublish_at else None,
                          "signing": k.kid == current} for k in ring.published(now)]}

    async def ca_rotate(request: web.Request, doc: dict[str, Any]) -> Any:
        overlap = _seconds(doc, "overlap_s") or timedelta(days=7)
        rec = creds.rotate_ca(overlap)
        return {"ca": rec.id, "certificate": rec.cert_pem,
                "old_ca_retires_in_s": overlap.total_seconds()}

    async def server_rotate(request: web.Request, doc: dict[str, Any]) -> Any:
        return _cert_json(creds.rotate_server_certificate())

    admin_or_auditor = frozenset({ADMIN, AUDITOR})
    admin = frozenset({ADMIN})
    assert admin_or_auditor <= ADMIN_ROLES

    def path(request: web.Request) -> str:
        return request.path

    def serial(request: web.Request) -> str:
        return request.match_info["serial"]

    def principal_target(request: web.Request) -> str:
        return "/".join(principal_of(request))

    app = web.Application(client_max_size=64 * 1024, middlewares=[headers_arrived])
    app.on_response_prepare.append(hide_banner)
    r = app.router
    r.add_get("/admin/certs", guarded("certs-list", admin_or_auditor, path, list_certs,
                                      write=False))
    r.add_post("/admin/certs", guarded("certs-issue", admin, path, issue))
    r.add_post("/admin/certs/{serial}/rotate", guarded("certs-rotate", admin, serial, rotate))
    r.add_post("/admin/certs/{serial}/revoke", guarded("certs-revoke", admin, serial, revoke))
    r.add_post("/admin/principals/{tenant}/{kind}/{name}/disable",
               guarded("principal-disable", admin, principal_target, disable))
    r.add_post("/admin/principals/{tenant}/{kind}/{name}/enable",
               guarded("principal-enable", admin, principal_target, enable))
    r.add_get("/admin/review", guarded("review", admin_or_auditor, path, review, write=False))
    r.add_post("/admin/keys/rotate", guarded("keys-rotate", admin, path, keys_rotate))
    r.add_get("/admin/keys", guarded("keys-list", admin_or_auditor, path, keys_list,
                                     write=False))
    r.add_post("/admin/ca/rotate", guarded("ca-rotate", admin, path, ca_rotate))
    r.add_post("/admin/tls/server/rotate", guarded("server-rotate", admin, path, server_rotate))
    if extra is not None:
        extra(r, guarded)
    return app


async def _run(creds: Credentials, actor: str, action: str, target: str, reason: str,
               call: Callable[[], Awaitable[Any]]) -> Any:
    """Run one admin action; refused ones and done ones are both audited."""
    if not reason.strip():
        creds.record_admin_event(actor, action, target, reason, "refused", "reason-required")
        raise AdminRefused(400, "reason-required", "every admin action needs a reason")
    try:
        result = await call()
    except AdminRefused as exc:
        creds.record_admin_event(actor, action, target, reason, "refused", exc.reason)
        raise
    creds.record_admin_event(actor, action, target, reason, "done")
    return result
