"""Breach notification to the affected tenant, over real sockets (D1, D12):
with the misroute fault on each shared system, the answer is withheld and
the *owner* of the foreign record, as the trusted feed names it, is told,
once per incident: delivered to its receiver over mTLS under one
Idempotency-Key and listed at its ``GET /notifications``. The requester is
told nothing, and no notification holds anything of the record."""

from __future__ import annotations

import http.client
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.core.breach import OWNER_RELATIONS
from gateway.demo.simulators import CONTROL_HEADER

from .conftest import HOST, RunningStack
from .test_routing_check import _values

# system, requester, path, resource kind of its records
CASES = [
    ("hes", "ores", "/hes/meters", "meter"),
    ("hes", "ores", "/hes/meters/{ores_meter}", "meter"),
    ("clearing", "lumen-energie", "/clearing/access-points", "ean"),
    ("clearing", "fluvius", "/clearing/access-points/{fluvius_ean}", "ean"),
    ("cmh", "proximus", "/cmh/requests", "cmh-request"),
    ("itsm", "sibelga", "/itsm/tickets", "ticket"),
]


def received(gw: RunningStack, tenant: str) -> dict[str, Any]:
    """What ``tenant``'s receiver got: Idempotency-Key -> delivered document."""
    conn = http.client.HTTPSConnection(HOST, gw.stack.receivers_port,
                                       context=gw.context("ores"), timeout=10)
    try:
        conn.request("GET", f"/_sim/received/{tenant}",
                     headers={CONTROL_HEADER: gw.stack.control_token})
        parts: dict[str, Any] = json.loads(conn.getresponse().read())["parts"]
        return parts
    finally:
        conn.close()


def about(parts: dict[str, Any], incident: str) -> dict[str, Any]:
    return {key: doc for key, doc in parts.items()
            if doc.get("kind") == "breach-notification"
            and doc["notification"]["incident"] == incident}


def wait_for(predicate: Any, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.05)


def canaries(gw: RunningStack, kind: str, rid: str) -> list[str]:
    """Values of the foreign record that must be in no notification."""
    ds = gw.stack.dataset
    found = [rid]
    if kind == "ean":
        ap = next(a for a in ds.access_points if a["ean"] == rid)
        found += [ap["customer"]["name"], ap["meter"]["serial"]]
    elif kind == "cmh-request":
        req = next(r for r in ds.cmh_requests if r["id"] == rid)
        found += [req["site"]["household"]["phone"], req["site"]["street"]]
    elif kind == "ticket":
        ticket = next(t for t in ds.tickets if t["id"] == rid)
        found += [ticket["requester"]["name"], ticket["requester"]["email"]]
    return found


def notifications(gw: RunningStack, tenant: str) -> list[dict[str, Any]]:
    resp = gw.client(tenant).get("/notifications")
    assert resp.status == 200, resp.body
    assert resp.json["tenant"] == tenant
    found: list[dict[str, Any]] = resp.json["notifications"]
    return found


@pytest.mark.parametrize("system,requester,path,kind", CASES)
def test_misroute_notifies_the_owner_once_and_not_the_requester(
        faults: RunningStack, system: str, requester: str, path: str, kind: str) -> None:
    gw = faults
    url = path.format(**_values(gw))
    gw.fault(system, "misroute")
    resp = gw.client(requester).get(url)
    assert resp.status == 502
    incident = resp.json["incident"]
    (request_event,) = [e for e in gw.audit_events()
                        if e.get("incident") == incident and e["event"] == "request"]
    (rid,) = request_event["resources"]  # the foreign record the check caught
    owners = gw.relations.holders(kind, rid, OWNER_RELATIONS[kind], datetime.now(UTC))
    owners.discard(requester)
    (owner,) = owners
    assert owner != requester

    # Delivered to the owner's receiver, once, under the incident's key.
    wait_for(lambda: about(received(gw, owner), incident))
    delivered = about(received(gw, owner), incident)
    assert list(delivered) == [f"gateway:breach/{incident}/{owner}"]
    (doc,) = delivered.values()
    assert doc["tenant"] == owner
    note = doc["notification"]
    assert note["owner"] == owner and note["requested_by"] == requester
    assert note["shared_system"] == system and note["records"] == 1
    assert note["route"] == request_event["route"]  # the template, never the path
    assert note["security_contact"] == f"mailto:security@{owner}.example"
    assert note["outcome"] == "withheld"

    # Readable by the owner, not by the requester; nobody else was told.
    listed = [n for n in notifications(gw, owner) if n["incident"] == incident]
    assert listed == [note]
    assert not [n for n in notifications(gw, requester) if n["incident"] == incident]
    assert not about(received(gw, requester), incident)
    events = [e for e in gw.audit_events() if e.get("event") == "breach-notification"
              and e["violation"] == incident]
    assert [(e["tenant"], e["requested_by"], e["records"]) for e in events] == [
        (owner, requester, 1)]

    # Nothing of the record: neither its id nor its content.
    texts = [json.dumps(doc), json.dumps(listed), json.dumps(events)]
    asked = url.split("?")[0].rsplit("/", 1)[-1]  # the requester's own id, on a detail route
    for canary in [*canaries(gw, kind, rid), *([asked] if "{" in path else [])]:
        assert all(canary not in text for text in texts), canary


def test_the_metric_counts_one_per_incident_and_owner(faults: RunningStack) -> None:
    gw = faults
    url = "/itsm/tickets"
    gw.fault("itsm", "misroute")
    resp = gw.client("sibelga").get(url)
    assert resp.status == 502
    incident = resp.json["incident"]
    (event,) = [e for e in gw.audit_events() if e.get("event") == "breach-notification"
                and e["violation"] == incident]
    owner = event["tenant"]
    before = gw.metric("gateway_breach_notifications_total", owner=owner)
    again = gw.client("sibelga").get(url)  # a second incident: a second notification
    assert again.status == 502
    assert gw.metric("gateway_breach_notifications_total", owner=owner) == before + 1
    assert gw.metric("gateway_breach_notifications_total", owner="sibelga") == 0


def test_notifications_are_read_with_get_only_and_a_bounded_limit(gw: RunningStack) -> None:
    client = gw.client("pidpa")
    assert client.get("/notifications?limit=1").status == 200
    for bad in ("/notifications?limit=0", "/notifications?limit=101",
                "/notifications?limit=x", "/notifications?tenant=ores"):
        resp = client.get(bad)
        assert resp.status == 400, bad
        assert resp.headers["content-type"] == "application/problem+json"
    resp = client.request("POST", "/notifications", body={})
    assert resp.status == 405 and resp.headers["allow"] == "GET"
    # D4: the customer portal reads nothing in its own name.
    assert gw.client("ores", "customer-portal").get("/notifications").status == 403
