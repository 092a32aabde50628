"""Admin-plane routes of the vault and break-glass and usage. Roles:
``security-admin`` manages the vault; ``privileged-user`` requests accounts;
``vault-approver`` decides and reviews; ``auditor`` reads."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

from aiohttp import web

from gateway.admin._request import CALLER, Body, Guard, RouteSet, _seconds, _text
from gateway.audit import UsageLedger
from gateway.pki import AdminRefused
from gateway.state import StateStore, record_json
from gateway.vault import BreakGlass, UpstreamCredentials, Vault

# The lockbox decisions as CSV (gateway review --lockbox --format csv).
LOCKBOX_COLUMNS = ["case_id", "tenant", "account", "mode", "emergency", "status", "approver",
                   "decided_at", "decision_reason", "expires_at", "review_status", "reviewer",
                   "reviewed_at", "review_notes", "requester", "requester_team", "ticket",
                   "created", "notice"]
ANYONE_VAULT = frozenset({"security-admin", "vault-approver", "privileged-user", "auditor"})


def vault_routes(vault: Vault, upstream_creds: UpstreamCredentials, breakglass: BreakGlass,
                 rekey: Callable[[], int] | None = None) -> RouteSet:
    """``rekey`` is unused here (kept for callers): the rekey route is
    dual-controlled and registered by :func:`gateway.admin._app.build_admin_app`."""
    def register(r: web.UrlDispatcher, guarded: Guard) -> None:
        def principal(request: web.Request) -> Any:
            return request[CALLER].principal

        def case_target(request: web.Request) -> str:
            return request.match_info["case"]

        def path(request: web.Request) -> str:
            return request.path

        async def secrets(request: web.Request, doc: Body) -> Any:
            # Metadata only: a value never leaves the vault through the API.
            # The age is the current version's, on the gateway's clock (the
            # same as gateway_vault_secret_age_seconds).
            now = upstream_creds.clock()
            return {"secrets": [{"id": m.id, "version": m.version, "kind": m.kind,
                                 "created": m.created.isoformat(),
                                 "age_s": round((now - m.created).total_seconds()),
                                 "labels": dict(m.labels)}
                                for m in vault.list()]}

        async def rotate_upstream(request: web.Request, doc: Body) -> Any:
            name = request.match_info["upstream"]
            if name not in upstream_creds.schemes:
                raise AdminRefused(404, "unknown-upstream", f"no credential for {name!r}")
            version = await upstream_creds.rotate(name)
            return {"upstream": name, "version": version}

        async def request_case(request: web.Request, doc: Body) -> Any:
            duration = _seconds(doc, "duration_s") or timedelta(hours=1)
            case = breakglass.request(principal(request), _text(doc, "account"),
                                      _text(doc, "reason"), _text(doc, "ticket"), duration,
                                      bool(doc.get("emergency", False)))
            return record_json(case)

        async def approve(request: web.Request, doc: Body) -> Any:
            return record_json(breakglass.decide(principal(request), case_target(request), True))

        async def deny(request: web.Request, doc: Body) -> Any:
            return record_json(breakglass.decide(principal(request), case_target(request), False))

        async def checkout(request: web.Request, doc: Body) -> Any:
            case, password = breakglass.checkout(principal(request), case_target(request))
            # SECURITY: shown this once; never audited, logged or stored in clear.
            return {**record_json(case), "credential": {"username": case.account,
                                                      "password": password}}

        async def checkin(request: web.Request, doc: Body) -> Any:
            # The case keeps the reason the person gave for closing it.
            return record_json(await breakglass.checkin(principal(request), case_target(request),
                                                      _text(doc, "reason")))

        async def review(request: web.Request, doc: Body) -> Any:
            return record_json(breakglass.review(principal(request), case_target(request),
                                               _text(doc, "reason")))

        async def list_cases(request: web.Request, doc: Body) -> Any:
            return {"cases": [record_json(c) for c in breakglass.store.breakglass_cases()]}

        async def lockbox(request: web.Request, doc: Body) -> Any:
            # D7: each reached tenant's part in each case: told, consented,
            # refused, expired, skipped by an emergency and its review.
            if breakglass.lockbox is not None:
                breakglass.lockbox.expire_due()
            review = request.query.get("review")
            if review not in (None, "none", "pending", "done"):
                raise AdminRefused(400, "field-invalid", "review: none, pending or done")
            rows = [record_json(e) for e in breakglass.store.lockbox_entries(
                tenant=request.query.get("tenant"))
                if review is None or e.review_status == review]
            if request.query.get("format") != "csv":
                return {"lockbox": rows}
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=LOCKBOX_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
            return web.Response(text=out.getvalue(), content_type="text/csv")

        admin = frozenset({"security-admin"})
        readers = frozenset({"security-admin", "auditor", "vault-approver"})
        r.add_get("/admin/vault/secrets", guarded("vault-list", readers, path, secrets,
                                                  write=False))
        r.add_post("/admin/vault/upstreams/{upstream}/rotate",
                   guarded("vault-rotate-upstream", admin,
                           lambda q: q.match_info["upstream"], rotate_upstream))
        # POST /admin/vault/rekey is dual-controlled: gateway.admin._app registers it (D6).
        r.add_post("/admin/breakglass/requests",
                   guarded("breakglass-request", frozenset({"privileged-user"}), path,
                           request_case))
        base = "/admin/breakglass/requests/{case}"
        r.add_post(base + "/approve", guarded("breakglass-approve", ANYONE_VAULT, case_target,
                                              approve))
        r.add_post(base + "/deny", guarded("breakglass-deny", ANYONE_VAULT, case_target, deny))
        r.add_post(base + "/checkout", guarded("breakglass-checkout", ANYONE_VAULT,
                                               case_target, checkout))
        r.add_post(base + "/checkin", guarded("breakglass-checkin", ANYONE_VAULT, case_target,
                                              checkin))
        r.add_post(base + "/review", guarded("breakglass-review", ANYONE_VAULT, case_target,
                                             review))
        r.add_get("/admin/breakglass", guarded("breakglass-list", ANYONE_VAULT, path,
                                               list_cases, write=False))
        r.add_get("/admin/lockbox", guarded("lockbox-list", readers, path, lockbox,
                                            write=False))
    return register


def usage_routes(ledger: UsageLedger, store: StateStore) -> RouteSet:
    """D10: aggregated usage per tenant x shared system x route template; D8:
    the register of purpose-bound consultations, for the managers' review."""
    def register(r: web.UrlDispatcher, guarded: Guard) -> None:
        async def usage(request: web.Request, doc: Body) -> Any:
            q = request.query
            period = q.get("period", "day")
            if period not in ("day", "week", "month"):
                raise AdminRefused(400, "field-invalid", "period: day, week or month")
            try:
                since = date.fromisoformat(q["since"]) if "since" in q else None
                until = date.fromisoformat(q["until"]) if "until" in q else None
            except ValueError as exc:
                raise AdminRefused(400, "field-invalid", "since/until: YYYY-MM-DD") from exc
            rows = ledger.query(period=period, tenant=q.get("tenant"),
                                upstream=q.get("upstream"), since=since, until=until)
            return {"period": period, "rows": [
                {"start": row.start.isoformat(), "tenant": row.tenant,
                 "upstream": row.upstream, "route": row.route, "requests": row.requests,
                 "denied": row.denied, "bytes_in": row.bytes_in, "bytes_out": row.bytes_out}
                for row in rows]}

        async def consultations(request: web.Request, doc: Body) -> Any:
            rows = [{"incident": c.incident, "at": c.at.isoformat(), "tenant": c.tenant,
                     "principal": c.principal, "route": c.route, "resource": c.resource,
                     "purpose": c.purpose, "justification": c.justification,
                     "approval": c.approval, "approver": c.approver}
                    for c in store.consultations(tenant=request.query.get("tenant"))]
            if request.query.get("format") != "csv":
                return {"consultations": rows}
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=["incident", "at", "tenant", "principal",
                                                     "route", "resource", "purpose",
                                                     "justification", "approval", "approver"])
            writer.writeheader()
            writer.writerows(rows)
            return web.Response(text=out.getvalue(), content_type="text/csv")

        r.add_get("/admin/consultations",
                  guarded("consultations", frozenset({"security-admin", "auditor"}),
                          lambda q: q.path, consultations, write=False))
        r.add_get("/admin/usage", guarded("usage", frozenset({"security-admin", "auditor"}),
                                          lambda q: q.path, usage, write=False))
    return register


def audit_routes(rotate_key: Callable[[], dict[str, str]]) -> RouteSet:
    """D10: the audit checkpoint key changes online (docs/audit-format.md §6):
    the lines so far are closed under the old key, which stays published at
    ``/.well-known/audit-keys.json`` as retired."""
    def register(r: web.UrlDispatcher, guarded: Guard) -> None:
        async def rotate(request: web.Request, doc: Body) -> Any:
            return rotate_key()

        r.add_post("/admin/audit/rotate-key",
                   guarded("audit-rotate-key", frozenset({"security-admin"}),
                           lambda q: q.path, rotate))
    return register


def combine(*sets: RouteSet) -> RouteSet:
    def register(r: web.UrlDispatcher, guarded: Guard) -> None:
        for route_set in sets:
            route_set(r, guarded)
    return register
