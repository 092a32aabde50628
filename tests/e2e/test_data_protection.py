"""Data protection over real sockets: the
classification matrix (D11) and the IT provider's pseudonymised view (D9)."""

from __future__ import annotations

import json

import pytest

from gateway.core.pseudonym import LEAK_PATTERNS

from .conftest import RunningStack


def _ticket(gw: RunningStack, label: str) -> str:
    return next(t["id"] for t in gw.stack.dataset.tickets
                if t["client"] == "ores" and t["classification"] == label)


@pytest.mark.parametrize("label,principal,status", [
    ("C2", "api", 200), ("C2", "it-desk", 200), ("C2", "ciso-desk", 200),
    ("C3", "api", 403), ("C3", "it-desk", 200), ("C3", "ciso-desk", 403),
    ("C4", "api", 403), ("C4", "it-desk", 403), ("C4", "ciso-desk", 200),
])
def test_classification_matrix(gw: RunningStack, label: str, principal: str,
                               status: int) -> None:
    before = gw.metric("gateway_classified_responses_total", label=label)
    resp = gw.client("ores", principal).get(f"/itsm/tickets/{_ticket(gw, label)}")
    assert resp.status == status, resp.body
    if status == 200:
        assert resp.headers["x-classification"] == label
        assert gw.metric("gateway_classified_responses_total", label=label) == before + 1
    else:
        title = next(t["title"] for t in gw.stack.dataset.tickets
                     if t["id"] == _ticket(gw, label))
        assert resp.json["incident"] and title.encode() not in resp.body  # nothing leaks
        event = next(e for e in gw.audit_events() if e.get("incident") == resp.json["incident"])
        assert event["reason"].startswith("classification-")


def test_foreign_tenant_never_gets_a_classified_ticket(gw: RunningStack) -> None:
    for tenant in ("fluvius", "engie-it"):
        assert gw.client(tenant).get(f"/itsm/tickets/{_ticket(gw, 'C4')}").status == 403


def test_it_provider_sees_no_raw_identifier(gw: RunningStack) -> None:
    client = gw.client("engie-it")
    bodies = [client.get("/itsm/tickets"), client.get("/itsm/assets")]
    listed = bodies[0].json["tickets"]
    assert listed, "the provider has assigned tickets in the demo"
    bodies += [client.get(f"/itsm/tickets/{t['id']}") for t in listed]
    for resp in bodies:
        assert resp.status == 200
        text = resp.body.decode()
        for name in ("ean", "national_register", "email"):
            assert not LEAK_PATTERNS[name].search(text), (name, text[:200])
    # Stable pseudonyms: the same person gets the same token in list and detail.
    first = listed[0]
    detail = client.get(f"/itsm/tickets/{first['id']}").json
    assert detail["requester"]["email"] == first["requester"]["email"]
    assert detail["requester"]["email"].startswith("ps_")
    # Other tenants still see their own data in clear.
    own = gw.client("ores").get("/itsm/tickets").json["tickets"][0]
    assert "@" in json.dumps(own["requester"])


def test_national_register_lookups_need_a_manager_s_approval(gw: RunningStack) -> None:
    # D8: a purpose stated in headers is not enough: the lookup names an
    # approval given beforehand (tests/e2e/test_rules_nrn.py), and a service
    # principal never looks anyone up. Nothing refused is registered.
    person = next(p for p in gw.stack.dataset.persons if p["employer"] == "ores")
    path = f"/itsm/persons/{person['nrn']}"
    client = gw.client("ores")
    before = len(gw.stack.gateway.store.consultations(tenant="ores"))
    gw.clear_sim_logs()
    for headers in ({}, {"X-Purpose": "hr-administration", "X-Justification": "HR-2026-17"}):
        resp = client.get(path, headers=headers)
        assert resp.status == 403, resp.body
    assert gw.sim_log("itsm") == []
    assert len(gw.stack.gateway.store.consultations(tenant="ores")) == before
