"""The isolation matrix (D1).

For every shared system and every ordered pair of demo tenants (X, Y): X
asking for one of Y's resources gets 403 and the simulator logs no such
request; X's own resource gets 200. Ownership comes from the same relation
feed the gateway loads, computed independently here.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.core.catalog import default_route_table
from gateway.core.identifiers import with_check_digit

from .conftest import RunningStack

# system -> (detail path template, resource kind)
SYSTEMS = {
    "hes": ("/hes/meters/{}", "meter"),
    "clearing": ("/clearing/access-points/{}", "ean"),
    "cmh": ("/cmh/requests/{}", "cmh-request"),
    "itsm": ("/itsm/tickets/{}", "ticket"),
}


def _resources(gw: RunningStack, kind: str) -> dict[str, set[str]]:
    """tenant -> ids of resources of ``kind`` it holds any relation on now."""
    now = datetime.now(UTC)
    out: dict[str, set[str]] = {}
    for rel in gw.relations:
        if rel.kind == kind and rel.holds_at(now):
            out.setdefault(rel.tenant, set()).add(rel.resource_id)
    return out


def _granted(gw: RunningStack, system: str, tenant: str, rid: str) -> bool:
    """Would the route grant ``tenant`` this resource now (per the feed)?"""
    template, kind = SYSTEMS[system]
    match = default_route_table().lookup("GET", template.format(rid)).match
    assert match is not None
    t = gw.stack.registry.tenants[tenant]
    names = match.route.grants.get(t.kind)
    if names is None:
        return False
    return gw.relations.find(kind, rid, tenant, names, datetime.now(UTC)) is not None


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_isolation_matrix(gw: RunningStack, system: str) -> None:
    template, kind = SYSTEMS[system]
    owned = _resources(gw, kind)
    tenants = sorted(gw.stack.registry.tenants)
    assert len(owned) >= 3, f"{system}: the demo data must hold several tenants' records"

    # Cross-tenant: 403, and not one request reaches the simulator.
    gw.clear_sim_logs()
    pairs = 0
    for x in tenants:
        for y in tenants:
            if x == y or y not in owned:
                continue
            foreign = sorted(r for r in owned[y] if not _granted(gw, system, x, r))
            assert foreign, f"{system}: {y} has no resource that {x} lacks (fix the dataset)"
            rid = foreign[0]
            resp = gw.client(x).get(template.format(rid))
            assert resp.status == 403, (system, x, y, rid, resp.status, resp.body)
            problem = resp.json
            assert resp.headers["content-type"].startswith("application/problem+json")
            assert problem["status"] == 403 and problem["incident"]
            pairs += 1
    assert pairs > len(owned)
    assert gw.sim_log(system) == [], f"{system}: a refused request reached the upstream"

    # Own resources: 200, and exactly those reached the simulator.
    gw.clear_sim_logs()
    asked = []
    for x in tenants:
        mine = sorted(r for r in owned.get(x, ()) if _granted(gw, system, x, r))
        if not mine:
            continue
        resp = gw.client(x).get(template.format(mine[0]))
        assert resp.status == 200, (system, x, mine[0], resp.status, resp.body)
        asked.append((x, mine[0]))
    assert asked
    log = gw.sim_log(system)
    assert [(e["tenant"], e["path"].rsplit("/", 1)[-1]) for e in log] == asked


@pytest.mark.parametrize("system,path,items", [
    ("hes", "/hes/meters", "meters"),
    ("clearing", "/clearing/access-points", "access_points"),
    ("cmh", "/cmh/requests", "requests"),
    ("itsm", "/itsm/tickets", "tickets"),
])
def test_lists_hold_only_the_callers_records(gw: RunningStack, system: str, path: str,
                                             items: str) -> None:
    id_field = {"hes": "serial", "clearing": "ean"}.get(system, "id")
    checked = 0
    for x in sorted(gw.stack.registry.tenants):
        resp = gw.client(x).get(path)
        if resp.status == 403:
            assert resp.json["status"] == 403
            continue
        assert resp.status == 200, (x, resp.body)
        for rec in resp.json[items]:
            assert _granted(gw, system, x, rec[id_field]), (x, rec[id_field])
            checked += 1
    assert checked > 0


def test_an_access_point_outside_belgium_is_refused_before_the_upstream(
        gw: RunningStack) -> None:
    """DOMAIN.md "Data": a Belgian access point's EAN starts with 54. A
    well-formed GSRN of another prefix is refused as a malformed id (400),
    and the clearing system never sees it."""
    gw.clear_sim_logs()
    for data in ("87123456789012345", "40123456789012345"):
        resp = gw.client("ores").get(f"/clearing/access-points/{with_check_digit(data)}")
        assert resp.status == 400, (resp.status, resp.body)
        assert resp.json["status"] == 400 and resp.json["incident"]
    assert gw.sim_log("clearing") == []
