"""D2, D4 over real sockets: ORES's customer portal reads an access point and
its consumption for one customer (X-On-Behalf-Of), proven by the meter number
(X-Meter-Number), only while and for when that customer lives there; a
landlord gets nothing; guessing meter numbers trips the repeated-denial
detector (D12); neither header reaches the clearing system."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from .conftest import RunningStack, start_stack

PORTAL = ("ores", "customer-portal")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    gw = start_stack(tmp_path_factory.mktemp("occupants"))
    yield gw
    gw.stop()


def home(gw: RunningStack) -> dict[str, Any]:
    """An ORES access point with its current occupant."""
    return next(a for a in gw.stack.dataset.access_points if a["grid_operator"] == "ores")


def ask(gw: RunningStack, path: str, customer: str | None, meter: str | None) -> Any:
    headers = {k: v for k, v in (("X-On-Behalf-Of", customer), ("X-Meter-Number", meter))
               if v is not None}
    return gw.client(*PORTAL).get(path, headers=headers)


def window(first: int, last: int) -> str:
    now = datetime.now(UTC)
    return (f"from={(now - timedelta(days=first)).date().isoformat()}"
            f"&to={(now - timedelta(days=last)).date().isoformat()}")


def test_the_occupant_reads_its_own_access_point(stack: RunningStack) -> None:
    ap = home(stack)
    stack.clear_sim_logs()
    resp = ask(stack, f"/clearing/access-points/{ap['ean']}", ap["customer"]["id"],
               ap["meter"]["serial"])
    assert resp.status == 200, resp.body
    assert resp.json["customer"]["name"] == ap["customer"]["name"]
    assert "contracts" not in resp.json and "restricted" not in resp.json
    log = stack.sim_log("clearing")
    assert len(log) == 1
    assert not {"x-on-behalf-of", "x-meter-number"} & set(log[0]["headers"])
    resp = ask(stack, f"/clearing/access-points/{ap['ean']}/consumption?{window(30, 1)}",
               ap["customer"]["id"], ap["meter"]["serial"])
    assert resp.status == 200, resp.body


@pytest.mark.parametrize(("who", "reason"), [
    ("landlord-ores-1", "no-occupancy"),  # "an owner ... must ask his tenants"
    ("former", "no-occupancy"),  # the previous occupant, for the access point now
    ("wrong-meter", "meter-number-mismatch"),
])
def test_everyone_else_gets_nothing(stack: RunningStack, who: str, reason: str) -> None:
    ap = home(stack)
    customer = {"landlord-ores-1": "landlord-ores-1",
                "former": ap["customer"]["id"] + "-former"}.get(who, ap["customer"]["id"])
    meter = "1SAG0000000000" if who == "wrong-meter" else ap["meter"]["serial"]
    stack.clear_sim_logs()
    resp = ask(stack, f"/clearing/access-points/{ap['ean']}", customer, meter)
    assert resp.status == 403, resp.body
    event = next(e for e in stack.audit_events() if e.get("incident") == resp.json["incident"])
    assert event["reason"] == reason
    assert stack.sim_log("clearing") == []


def test_consumption_only_for_the_occupancy(stack: RunningStack) -> None:
    ap = home(stack)
    path = f"/clearing/access-points/{ap['ean']}/consumption"
    current, meter = ap["customer"]["id"], ap["meter"]["serial"]
    # The current occupant moved in 730 days ago; the former one lived there before.
    assert ask(stack, f"{path}?{window(700, 690)}", current, meter).status == 200
    resp = ask(stack, f"{path}?{window(740, 720)}", current, meter)
    assert resp.status == 403
    assert ask(stack, f"{path}?{window(760, 740)}", current + "-former", meter).status == 200
    assert ask(stack, f"{path}?{window(10, 1)}", current + "-former", meter).status == 403


def test_the_portal_reads_nothing_in_its_own_name(stack: RunningStack) -> None:
    ap = home(stack)
    for path in ("/clearing/access-points", f"/hes/meters/{ap['meter']['serial']}"):
        resp = ask(stack, path, ap["customer"]["id"], ap["meter"]["serial"])
        assert resp.status == 403, (path, resp.body)
    assert ask(stack, f"/clearing/access-points/{ap['ean']}", None,
               ap["meter"]["serial"]).status == 400


def test_guessing_meter_numbers_alerts_the_soc(stack: RunningStack) -> None:
    ap = home(stack)
    for n in range(25):
        resp = ask(stack, f"/clearing/access-points/{ap['ean']}", ap["customer"]["id"],
                   f"1SAG{n:010d}")
        assert resp.status == 403
    soc = (stack.stack.work_dir / "soc.jsonl").read_text()
    assert '"kind":"repeated-denials"' in soc and '"principal":"customer-portal"' in soc
