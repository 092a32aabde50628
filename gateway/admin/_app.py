"""The admin plane: a JSON API on its own mTLS listener, for the
security team's principals only. Every call, refused or done, is audited with
actor, action, target and reason.

This module owns the frame every admin route runs in (``guarded()`` in
:func:`build_admin_app`) and assembles the plane; the routes themselves are
route sets: the credential actions (:mod:`gateway.admin._certs`), pending
actions (:mod:`gateway.admin._duties`), the vault, break-glass, usage and
audit keys (:mod:`gateway.admin._vault`). What a handler reads from its
request is :mod:`gateway.admin._request`.

Roles (declared per principal in ``tenants/``):

- ``security-admin``: issue, rotate and revoke certificates, disable and
  re-enable principals, rotate the CA, the server certificate, signing keys;
- ``auditor``: read the certificate list, the signing keys and the access review.

Segregation of duties (D6): nobody issues, rotates or re-enables their own
credentials; what needs a second security admin is decided by
``gateway.core.duties`` and waits as a pending action (``gateway.admin._duties``).

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

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from aiohttp import web

from gateway.admin._certs import credential_executors, credential_routes
from gateway.admin._duties import DualControl, Pending, pending_json, pending_routes
from gateway.admin._request import AUDIT_EXTRA, CALLER, MAX_BODY_BYTES, Handler, RouteSet, read_body
from gateway.edge import CallerResolver, CredentialRefused, headers_arrived
from gateway.errors import RequestRefused
from gateway.metrics import GatewayMetrics
from gateway.pki import AdminRefused, Credentials
from gateway.problem import CONTENT_TYPE, new_incident_id, own_slug_for, problem_body
from gateway.vault import RekeyProgress

log = logging.getLogger("gateway.admin")


async def hide_banner(_: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = "gateway"  # no version banner


def _problem(status: int, detail: str, incident: str | None = None) -> web.Response:
    # The type follows the status (gateway.problem.PROBLEM_STATUSES): a 409
    # is a "conflict", a 422 "unprocessable-content", never a "bad-request".
    return web.Response(status=status, content_type=CONTENT_TYPE, headers={"Server": "gateway"},
                        body=problem_body(status, incident or new_incident_id(),
                                          own_slug_for(status), detail))


def build_admin_app(creds: Credentials, resolver: CallerResolver,
                    metrics: GatewayMetrics, extra: RouteSet | None = None,
                    rekey: Callable[[], int] | None = None,
                    rekey_progress: Callable[[], RekeyProgress] | None = None,
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
                doc = await read_body(request) if write else {}
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
            created = action.endswith(("issue", "-request"))  # a new certificate, case, request
            return web.json_response(result, status=201 if created else 200)
        return handler

    def _internal_error(action: str, actor: str, where: str, reason: str, exc: BaseException,
                        more: dict[str, str]) -> web.Response:
        incident = new_incident_id()
        log.error("admin %s failed", action, exc_info=exc, extra={"incident": incident})
        metrics.admin_actions.labels(action, "error").inc()
        try:
            creds.record_admin_event(actor, action, where, reason, "error",
                                     type(exc).__name__, incident=incident, extra=more)
        except Exception:
            log.exception("admin audit write failed", extra={"incident": incident})
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

    # D6, D7: the actions a second security admin may have to approve.
    duties = DualControl(creds, credential_executors(creds, rekey), pending_ttl)
    app = web.Application(client_max_size=MAX_BODY_BYTES,
                          middlewares=[headers_arrived, every_answer_audited])
    app.on_response_prepare.append(hide_banner)
    credential_routes(creds, duties, with_vault=rekey is not None,
                      rekey_progress=rekey_progress)(app.router, guarded)
    pending_routes(duties)(app.router, guarded)
    if extra is not None:
        extra(app.router, guarded)
    return app
