"""The security team's access review (D8): who is declared, what each may
do, which certificates it holds and when it last used one."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from gateway.pki._records import ADMIN_ROLES
from gateway.state import PrincipalKey, StateStore
from gateway.tenants import TenantRegistry


def access_review(store: StateStore, tenants: TenantRegistry,
                  unwritten: dict[PrincipalKey, datetime]) -> list[dict[str, Any]]:
    """D8: one row per declared principal (roles, admin grants, state,
    certificates, last use); ``two_person`` lists the certificates issued
    under the two-person rule and by whom (D6). ``unwritten``: uses noted
    and not yet in ``store``."""
    dual: dict[str, list[dict[str, str]]] = {}
    for item in store.pending_actions(status="done"):
        if item.action in ("certs-issue", "certs-rotate") and item.result:
            serial = json.loads(item.result).get("serial", "")
            dual.setdefault(item.principal, []).append({
                "serial": serial, "pending": item.id, "requested_by": item.requester,
                "approved_by": item.approver or ""})
    last = store.last_seen()
    last.update(unwritten)  # noted, or being written now
    states = {s.key: s for s in store.principal_states()}
    rows = []
    for tenant in tenants:
        for p in tenant.principals.values():
            key = (tenant.id, p.kind, p.name)
            certs = store.certificates(principal=key)
            seen = last.get(key)
            state = states.get(key)
            rows.append({
                "tenant": tenant.id, "tenant_kind": tenant.kind, "principal_kind": p.kind,
                "principal": p.name, "team": p.team or "",
                "roles": sorted(p.roles),
                "admin_grants": sorted(p.roles & ADMIN_ROLES),
                "disabled": bool(state and state.disabled),
                "certificates": [{"serial": c.serial, "status": c.status,
                                  "not_after": c.not_after.isoformat()} for c in certs],
                "last_used": seen.isoformat() if seen else None,
                "two_person": dual.get("/".join(key), []),
            })
    return rows
