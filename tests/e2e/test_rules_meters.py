"""D5 over real sockets: the gateway refuses remote operations on the demo's
meter in airplane mode from the relation feed, before the HES sees them,
except the prepayment function; leaving airplane mode needs the customer's
consent in the feed; a meter's readings go back three years at most."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from .conftest import RunningStack


def quiet_meter(gw: RunningStack) -> tuple[str, str]:
    meter = next(m for m in gw.stack.dataset.meters if m["airplane_mode"])
    return meter["serial"], meter["owners"][-1]["tenant"]


def operator(gw: RunningStack, tenant: str) -> str:
    t = gw.stack.registry.tenants[tenant]
    return next(p.name for p in t.principals.values() if "meter-operator" in p.roles)


@pytest.mark.parametrize(("operation", "reason"), [
    ("disconnect", "meter-in-airplane-mode"),
    ("connect", "meter-in-airplane-mode"),
    ("airplane-mode-off", "airplane-mode-consent-missing"),
])
def test_the_gateway_refuses_what_the_feed_forbids(gw: RunningStack, operation: str,
                                                   reason: str) -> None:
    serial, owner = quiet_meter(gw)
    gw.clear_sim_logs()
    resp = gw.client(owner, operator(gw, owner)).request(
        "POST", f"/hes/meters/{serial}/operations", {"operation": operation})
    assert resp.status == 409, (resp.status, resp.body)
    # The gateway's own refusal, not one relayed from the HES.
    assert resp.json["type"].endswith(":conflict")
    assert resp.json["incident"] and resp.headers["content-type"].startswith(
        "application/problem+json")
    assert gw.sim_log("hes") == []  # judged by the gateway, not by the HES
    event = next(e for e in reversed(gw.audit_events())
                 if e.get("incident") == resp.json["incident"])
    assert event["reason"] == reason and event["decision"] == "deny"


def test_the_prepayment_function_passes_in_airplane_mode(gw: RunningStack) -> None:
    serial, owner = quiet_meter(gw)
    gw.clear_sim_logs()
    resp = gw.client(owner, operator(gw, owner)).request(
        "POST", f"/hes/meters/{serial}/operations", {"operation": "prepayment-top-up"})
    assert resp.status == 200, (resp.status, resp.body)
    assert [e["path"] for e in gw.sim_log("hes")] == [f"/meters/{serial}/operations"]


def test_readings_older_than_three_years_are_refused(gw: RunningStack) -> None:
    meter = next(m for m in gw.stack.dataset.meters
                 if not m["airplane_mode"] and len(m["owners"]) == 1
                 and m["owners"][0]["valid_from"] is None)
    tenant = meter["owners"][0]["tenant"]
    day = (datetime.now(UTC) - timedelta(days=4 * 365)).date().isoformat()
    gw.clear_sim_logs()
    resp = gw.client(tenant).get(f"/hes/meters/{meter['serial']}/readings?date={day}")
    assert resp.status == 403, (resp.status, resp.body)
    assert gw.sim_log("hes") == []
