"""The response routing check over real sockets: for every shared system the
misroute fault makes the gateway withhold the answer (502), count it, and
write an audit event with the same incident id (D1)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from .conftest import RunningStack

CASES = [
    # system, tenant, path (own resource or list)
    ("hes", "ores", "/hes/meters"),
    ("hes", "ores", "/hes/meters/{ores_meter}"),
    ("hes", "ores", "/hes/meters/{ores_meter}/readings?date={yesterday}"),
    ("clearing", "lumen-energie", "/clearing/access-points"),
    ("clearing", "fluvius", "/clearing/access-points/{fluvius_ean}"),
    ("clearing", "fluvius", "/clearing/access-points/{fluvius_ean}/consumption"
                            "?from={last_week}&to={yesterday}"),
    ("cmh", "proximus", "/cmh/requests"),
    ("cmh", "orange", "/cmh/requests/{orange_request}"),
    ("itsm", "sibelga", "/itsm/tickets"),
    ("itsm", "sibelga", "/itsm/tickets/{sibelga_ticket}"),
    ("itsm", "pidpa", "/itsm/assets"),
]


def _values(gw: RunningStack) -> dict[str, str]:
    ds = gw.stack.dataset
    today = datetime.now(UTC).date()
    return {
        "ores_meter": next(m["serial"] for m in ds.meters if m["owners"][-1]["tenant"] == "ores"
                           and not m["airplane_mode"]),
        "fluvius_ean": next(a["ean"] for a in ds.access_points
                            if a["grid_operator"] == "fluvius"),
        "orange_request": next(r["id"] for r in ds.cmh_requests
                               if any(c["operator"] == "orange" for c in r["connections"])),
        "sibelga_ticket": next(t["id"] for t in ds.tickets if t["client"] == "sibelga"),
        "yesterday": (today - timedelta(days=1)).isoformat(),
        "last_week": (today - timedelta(days=7)).isoformat(),
    }


@pytest.mark.parametrize("system,tenant,path", CASES)
def test_misroute_is_withheld_and_counted(faults: RunningStack, system: str, tenant: str,
                                          path: str) -> None:
    gw = faults
    url = path.format(**_values(gw))
    healthy = gw.client(tenant).get(url)
    assert healthy.status == 200, healthy.body

    before = gw.metric("gateway_isolation_violations_total", tenant=tenant, upstream=system,
                       direction="response")
    gw.fault(system, "misroute")
    resp = gw.client(tenant).get(url)
    assert resp.status == 502
    problem = resp.json
    assert problem["type"].endswith(":isolation-violation")
    assert resp.headers["content-type"] == "application/problem+json"
    # Nothing of the foreign answer leaks into the problem document.
    assert set(problem) == {"type", "title", "status", "detail", "incident"}
    after = gw.metric("gateway_isolation_violations_total", tenant=tenant, upstream=system,
                      direction="response")
    assert after == before + 1
    events = [e for e in gw.audit_events() if e.get("incident") == problem["incident"]]
    assert len(events) == 1
    assert events[0]["reason"] in ("foreign-record", "record-not-requested")
    assert events[0]["tenant"] == tenant and events[0]["status"] == 502


def test_ean_never_reaches_telecom(gw: RunningStack) -> None:
    for operator in ("proximus", "orange", "telenet"):
        resp = gw.client(operator).get("/cmh/requests")
        assert resp.status == 200
        assert resp.json["requests"]
        assert not re.search(rb"54\d{16}", resp.body), operator
        for req in resp.json["requests"]:
            assert {c["operator"] for c in req["connections"]} == {operator}


def test_d3_restricted_block_only_for_initiator_and_grid_operator(gw: RunningStack) -> None:
    ap = next(a for a in gw.stack.dataset.access_points if a["restricted"])
    initiator = ap["restricted"]["initiator"]
    now = datetime.now(UTC).isoformat()
    new_supplier = next(c["supplier"] for c in ap["contracts"]
                        if c["supplier"] != initiator and c["valid_from"] <= now < c["valid_to"])
    path = f"/clearing/access-points/{ap['ean']}"
    seen_by_new = gw.client(new_supplier).get(path)
    assert seen_by_new.status == 200
    assert "restricted" not in seen_by_new.json
    assert b"drop" not in seen_by_new.body
    assert {c["supplier"] for c in seen_by_new.json["contracts"]} == {new_supplier}
    assert gw.client(initiator).get(path).json["restricted"]["drop_in_progress"] is True
    assert gw.client(ap["grid_operator"]).get(path).json["restricted"]["drop_in_progress"]


def test_d2_a_supplier_reads_customer_data_only_it_supplied(gw: RunningStack) -> None:
    """D2: "the customer data a supplier can consult are the data supplied by
    the suppliers themselves via market messages"; an allow-list of the
    access point's fields, over real sockets (list and detail)."""
    from gateway.core.fields import SUPPLIER_ACCESS_POINT_FIELDS

    ap = next(a for a in gw.stack.dataset.access_points if a["restricted"])
    supplier = ap["customer"]["supplied_by"]
    now = datetime.now(UTC).isoformat()
    other = next(c["supplier"] for c in ap["contracts"]
                 if c["supplier"] != supplier and c["valid_from"] <= now < c["valid_to"])
    path = f"/clearing/access-points/{ap['ean']}"
    own = gw.client(supplier).get(path).json
    assert own["customer"]["name"] == ap["customer"]["name"]
    assert set(own) <= SUPPLIER_ACCESS_POINT_FIELDS
    theirs = gw.client(other).get(path)
    assert theirs.status == 200 and "customer" not in theirs.json
    assert ap["customer"]["name"].encode() not in theirs.body
    listed = gw.client(other).get("/clearing/access-points").json["access_points"]
    assert listed and all(set(r) <= SUPPLIER_ACCESS_POINT_FIELDS for r in listed)
    assert all(r.get("customer", {}).get("supplied_by") in (None, other) for r in listed)
    # the grid operator reads the whole record
    assert gw.client(ap["grid_operator"]).get(path).json["customer"] == ap["customer"]


def test_d3_initiator_comes_from_the_feed_not_the_answer(gw: RunningStack) -> None:
    """The clearing system's answer names the new supplier as the drop's
    initiator; the relation feed names the old one. The new supplier still
    learns nothing of the drop; the feed's initiator still sees it (D3,
    DESIGN.md §4: an upstream's answer never vouches for itself)."""
    from gateway.demo.simulators.clearing import CLEARING

    ap = next(a for a in gw.stack.dataset.access_points if a["restricted"])
    feed = gw.relations.holders("ean", ap["ean"], "drop-initiator", datetime.now(UTC))
    assert feed == {ap["restricted"]["initiator"]}
    now = datetime.now(UTC).isoformat()
    new_supplier = next(c["supplier"] for c in ap["contracts"]
                        if c["supplier"] not in feed and c["valid_from"] <= now < c["valid_to"])
    served = gw.stack.apps["clearing"][CLEARING].access_points[ap["ean"]]["restricted"]
    original = dict(served)
    served["initiator"] = new_supplier  # the upstream's answer now lies
    try:
        path = f"/clearing/access-points/{ap['ean']}"
        seen_by_new = gw.client(new_supplier).get(path)
        assert seen_by_new.status == 200
        assert "restricted" not in seen_by_new.json and b"drop" not in seen_by_new.body
        listed = gw.client(new_supplier).get("/clearing/access-points")
        assert listed.status == 200
        (item,) = [a for a in listed.json["access_points"] if a["ean"] == ap["ean"]]
        assert "restricted" not in item
        (initiator,) = feed
        assert gw.client(initiator).get(path).json["restricted"]["drop_in_progress"] is True
    finally:
        served.clear()
        served.update(original)


@pytest.mark.parametrize("mode,status,reason", [
    ("error", 502, "upstream-5xx"),
    ("reset", 502, "upstream-unreachable"),
    ("slow", 504, "upstream-timeout"),
])
def test_upstream_faults_become_problems(faults: RunningStack, mode: str, status: int,
                                         reason: str) -> None:
    gw = faults
    gw.fault("itsm", mode, delay_s=3.0 if mode == "slow" else None)
    resp = gw.client("ores").get("/itsm/tickets")
    assert resp.status == status
    incident = resp.json["incident"]
    event = next(e for e in gw.audit_events() if e.get("incident") == incident)
    assert event["reason"] == reason
