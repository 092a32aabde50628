"""The admin plane (issue 3): a JSON API on its own mTLS listener, for the
security team's principals only. Every call, refused or done, is audited with
actor, action, target and reason.

Roles (declared per principal in ``tenants/``):

- ``security-admin``: issue, rotate and revoke certificates, disable and
  re-enable principals, rotate the CA, the server certificate, signing keys;
- ``auditor``: read the certificate list, the signing keys and the access review.

Segregation of duties (D6): nobody issues, rotates or re-enables their own
credentials; what needs a second security admin is decided by
``gateway.core.duties`` and waits as a pending action (``gateway.admin_duties``).

No action without its audit event (D10). Chosen order: (1) the body is
parsed with a nesting limit (64) and no duplicate keys, and every text in it
must be valid Unicode (a lone surrogate is a 400 before anything happens);
(2) an ``attempt`` event is written *before* the action: if the audit log
cannot be written, the action does not run (500); (3) the action runs;
(4) its outcome (``done``, ``pending``, ``refused`` or ``error``) is written.
A crash between (3) and (4) leaves the attempt as the trace. Every other
answer of the plane (404, 405, 500 with its incident id) is audited too.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from aiohttp import web

from gateway.admin_duties import DualControl, Pending, pending_json, pending_routes
from gateway.core.jsonlimits import DuplicateKey, TooDeep, loads_limited
from gateway.core.model import Principal
from gateway.credentials import ADMIN_ROLES, AdminRefused, Credentials
from gateway.errors import RequestRefused
from gateway.identity import CallerResolver, CredentialRefused
from gateway.metrics import GatewayMetrics
from gateway.problem import CONTENT_TYPE, new_incident_id, problem_body
from gateway.state import CertificateRecord, PrincipalKey

log = logging.getLogger("gateway.admin")

ADMIN = "security-admin"
MAX_JSON_DEPTH = 64  # nesting of admin bodies (gateway.core.jsonlimits)
MAX_SECONDS = 100 * 365 * 86400.0  # any duration beyond is a typo (and overflows timedelta)
AUDITOR = "auditor"
CALLER: web.RequestKey[Any] = web.RequestKey("caller", object)
# Named fields a handler adds to its audit event (D6: both actors of a decision).
AUDIT_EXTRA: web.RequestKey[dict[str, str]] = web.RequestKey("audit_extra", dict)
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


def _problem(status: int, detail: str, incident: str | None = None) -> web.Response:
    slug = {400: "bad-request", 403: "forbidden", 404: "not-found", 405: "method-not-allowed",
            409: "bad-request", 413: "payload-too-large", 422: "bad-request",
            501: "not-implemented"}.get(status, "internal-error")
    return web.Response(status=status, content_type=CONTENT_TYPE, headers={"Server": "gateway"},
                        body=problem_body(status, incident or new_incident_id(), slug, detail))


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
        doc = loads_limited(await request.read() or b"{}", MAX_JSON_DEPTH)
    except TooDeep as exc:
        raise AdminRefused(400, "body-too-deep",
                           f"JSON nested deeper than {MAX_JSON_DEPTH}") from exc
    except DuplicateKey as exc:
        raise AdminRefused(400, "body-duplicate-key", str(exc)) from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise AdminRefused(400, "body-malformed-json", "the body must be a JSON object") from exc
    if not isinstance(doc, dict):
        raise AdminRefused(400, "body-not-object", "the body must be a JSON object")
    _check_encodable(doc)
    return doc


def _check_encodable(value: Any) -> None:
    """Every text of the body must be valid Unicode (a JSON ``\\ud800`` escape
    is not): checked before anything happens, so no action can run whose
    audit event cannot be written (D10)."""
    texts: list[str] = []
    stack = [value]
    while stack:  # iterative: the depth is bounded already, but no recursion needed
        item = stack.pop()
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict):
            texts.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise AdminRefused(400, "field-not-utf8",
                               "a text field is not valid Unicode (lone surrogate)") from exc


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
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0 \
            or not float(value) * unit <= MAX_SECONDS:  # also NaN and infinity
        raise AdminRefused(400, "field-invalid",
                           f"field {key!r} must be a positive number (at most 100 years)")
    return timedelta(seconds=float(value) * unit)


Body = dict[str, Any]
Action = Callable[[web.Request, Body], Awaitable[Any]]
Guard = Callable[..., Handler]  # guarded(action, roles, target, fn, *, write=True)
RouteSet = Callable[[web.UrlDispatcher, Guard], None]


def person_of(caller: Any) -> Principal:
    p = caller.principal
    return Principal(caller.tenant.id, p.kind, p.name, p.roles, p.team)


def build_admin_app(creds: Credentials, resolver: CallerResolver,
                    metrics: GatewayMetrics, extra: RouteSet | None = None,
                    rekey: Callable[[], int] | None = None,
                    pending_ttl: timedelta = timedelta(hours=24)) -> web.Application:
    def actor_of(request: web.Request) -> str:
        c = request[CALLER]
        return f"{c.tenant.id}/{c.principal.kind}/{c.principal.name}"

    def refused(action: str, actor: str, target: str, reason: str, code: str,
                status: int, detail: str, more: dict[str, str]) -> web.Response:
        metrics.admin_actions.labels(action, "refused").inc()
        try:
            incident = creds.record_admin_event(actor, action, target, reason, "refused", code,
                                                extra=more)
        except Exception:
            log.exception("admin audit write failed (refusal of %s)", action)
            return _problem(500, "the audit log cannot be written")
        return _problem(status, detail, incident)

    def guarded(action: str, roles: frozenset[str], target: Callable[[web.Request], str],
                fn: Callable[[web.Request, dict[str, Any]], Awaitable[Any]],
                *, write: bool = True) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            actor, reason = "unknown", ""
            more: dict[str, str] = {}
            request[AUDIT_EXTRA] = more
            where = target(request)
            try:
                try:
                    caller = resolver.resolve(request)
                except RequestRefused as exc:
                    if isinstance(exc, CredentialRefused):  # a known principal, refused
                        actor = "/".join(exc.caller.principal.key)
                    raise AdminRefused(403, exc.reason,
                                       "the client certificate is not an admin principal"
                                       ) from exc
                request[CALLER] = caller
                actor = actor_of(request)
                if not roles & caller.principal.roles:
                    raise AdminRefused(403, "missing-role",
                                       f"this action needs one of: {', '.join(sorted(roles))}")
                doc = await _body(request) if write else {}
                raw_reason = doc.get("reason", "") if write else "read"
                if not isinstance(raw_reason, str):
                    raise AdminRefused(400, "field-invalid", "reason must be a string")
                reason = raw_reason
                if not reason.strip():
                    raise AdminRefused(400, "reason-required", "every admin action needs a reason")
                if write:
                    # D10: the attempt is recorded before anything happens; if
                    # that write fails, nothing is done (500, below).
                    creds.record_admin_event(actor, action, where, reason, "attempt")
                result = await fn(request, doc)
            except AdminRefused as exc:
                return refused(action, actor, where, reason, exc.reason, exc.status, exc.detail,
                               more)
            except Exception as exc:
                return _internal_error(action, actor, where, reason, exc, more)
            outcome = "pending" if isinstance(result, Pending) else "done"
            if isinstance(result, Pending):
                more.update({"pending": result.item.id, "requested_by": actor})
            try:
                creds.record_admin_event(actor, action, where, reason, outcome,
                                         result.item.rule if isinstance(result, Pending)
                                         else "", extra=more)
            except Exception as exc:  # the attempt event holds the trace
                return _internal_error(action, actor, where, reason, exc, more)
            metrics.admin_actions.labels(action, outcome).inc()
            if isinstance(result, Pending):
                return web.json_response(pending_json(result.item), status=202)
            if isinstance(result, web.StreamResponse):
                return result
            created = action.endswith("issue") or action == "breakglass-request"
            return web.json_response(result, status=201 if created else 200)
        return handler

    def _internal_error(action: str, actor: str, where: str, reason: str, exc: BaseException,
                        more: dict[str, str]) -> web.Response:
        incident = new_incident_id()
        log.error("admin %s failed (incident %s)", action, incident, exc_info=exc)
        metrics.admin_actions.labels(action, "error").inc()
        try:
            creds.record_admin_event(actor, action, where, reason, "error",
                                     type(exc).__name__, incident=incident, extra=more)
        except Exception:
            log.exception("admin audit write failed (incident %s)", incident)
        return _problem(500, "the gateway failed to handle the request", incident)

    @web.middleware
    async def every_answer_audited(request: web.Request, handler: Handler
                                   ) -> web.StreamResponse:
        """D10: routing refusals (404, 405) and failures outside a guarded
        handler are audit events and problem documents too."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return refused("admin-route", "unknown", request.path, "", f"http-{exc.status}",
                           exc.status, exc.reason, {"method": request.method})
        except Exception as exc:
            return _internal_error("admin-route", "unknown", request.path, "", exc,
                                   {"method": request.method})

    # -- executors: what an action does, once it may be done ------------------
    async def do_issue(p: Body, actor: str, reason: str) -> Any:
        lifetime = timedelta(seconds=p["lifetime_s"]) if p.get("lifetime_s") else None
        return _cert_json(creds.issue((p["tenant"], p["kind"], p["name"]),
                                      p["csr"].encode(), lifetime))

    async def do_rotate(p: Body, actor: str, reason: str) -> Any:
        overlap = timedelta(seconds=p["overlap_s"]) if p.get("overlap_s") else None
        lifetime = timedelta(seconds=p["lifetime_s"]) if p.get("lifetime_s") else None
        return _cert_json(creds.rotate(p["serial"], p["csr"].encode(), overlap, lifetime))

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
        return {"rewrapped": rekey()}

    duties = DualControl(creds, {
        "certs-issue": do_issue, "certs-rotate": do_rotate, "principal-enable": do_enable,
        "principal-disable": do_disable, "ca-rotate": do_ca_rotate, "vault-rekey": do_rekey,
    }, pending_ttl)

    async def gate(request: web.Request, action: str, principal: PrincipalKey | None,
                   params: Body, doc: Body) -> Any:
        return await duties.gate(action, person_of(request[CALLER]), target_of(request),
                                 principal, params, doc.get("reason", ""))

    def target_of(request: web.Request) -> str:
        m = request.match_info
        if "serial" in m:
            return m["serial"]
        if "name" in m:
            return "/".join(principal_of(request))
        return request.path

    def _secs(doc: Body, key: str, unit: float = 1.0) -> float | None:
        value = _seconds(doc, key, unit)
        return value.total_seconds() if value else None

    # -- handlers ----------------------------------------------------------
    async def issue(request: web.Request, doc: dict[str, Any]) -> Any:
        principal = (_text(doc, "tenant"), _text(doc, "kind"), _text(doc, "name"))
        lifetime = _secs(doc, "lifetime_days", 86400)
        csr = _text(doc, "csr")
        duties.rule("certs-issue", person_of(request[CALLER]), principal)
        creds.check_issuable(principal, csr.encode(),
                             timedelta(seconds=lifetime) if lifetime else None)
        return await gate(request, "certs-issue", principal,
                          {"tenant": principal[0], "kind": principal[1],
                           "name": principal[2], "csr": csr, "lifetime_s": lifetime}, doc)

    async def rotate(request: web.Request, doc: dict[str, Any]) -> Any:
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

    def principal_params(request: web.Request) -> Body:
        key = principal_of(request)
        return {"tenant": key[0], "kind": key[1], "name": key[2]}

    async def disable(request: web.Request, doc: dict[str, Any]) -> Any:
        _text(doc, "reason")
        return await gate(request, "principal-disable", principal_of(request),
                          principal_params(request), doc)

    async def enable(request: web.Request, doc: dict[str, Any]) -> Any:
        _text(doc, "reason")
        return await gate(request, "principal-enable", principal_of(request),
                          principal_params(request), doc)

    async def review(request: web.Request, doc: dict[str, Any]) -> Any:
        rows = creds.review()
        if request.query.get("format") != "csv":
            return {"principals": rows}
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
        creds.active_ca()  # 501 at once without a CA, not after an approval
        return await gate(request, "ca-rotate", None, {"overlap_s": _secs(doc, "overlap_s")},
                          doc)

    async def vault_rekey(request: web.Request, doc: dict[str, Any]) -> Any:
        return await gate(request, "vault-rekey", None, {}, doc)

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

    app = web.Application(client_max_size=64 * 1024,
                          middlewares=[headers_arrived, every_answer_audited])
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
    if rekey is not None:
        r.add_post("/admin/vault/rekey", guarded("vault-rekey", admin, path, vault_rekey))
    pending_routes(duties)(r, guarded)
    if extra is not None:
        extra(r, guarded)
    return app
