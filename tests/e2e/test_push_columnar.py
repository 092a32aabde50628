"""The columnar push format (meter-days/v1) end to end over mTLS: intake ->
encrypted outbox -> each operator's receiver (D1, D5)."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.core.push.days import FORMAT, KIND

from .conftest import HOST, RunningStack, start_stack
from .test_push import receiver, wait_for


@pytest.fixture()
def lone(tmp_path: Path) -> Iterator[RunningStack]:
    gw = start_stack(tmp_path)
    yield gw
    gw.stop()


def post_raw(gw: RunningStack, body: bytes) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPSConnection(HOST, gw.port,
                                       context=gw.context("hes-operator", "pusher"), timeout=15)
    try:
        conn.request("POST", "/push/hes/batches", body=body,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def parts(gw: RunningStack, tenant: str) -> list[dict[str, Any]]:
    return list(receiver(gw, "GET", f"/_sim/received/{tenant}")["parts"].values())


def meter_days(gw: RunningStack, tenant: str) -> list[dict[str, Any]]:
    return [m for p in parts(gw, tenant) for m in p["meter_days"]]


def a_day(meter: str, start: datetime, n: int = 96, **extra: Any) -> dict[str, Any]:
    return {"meter": meter, "start": start.isoformat(), "interval": 900, "obis": "1-0:1.29.0",
            "unit": "kWh", "values": [round(0.1 + 0.001 * i, 3) for i in range(n)],
            "quality": "01" * n, **extra}


def test_meter_days_reach_exactly_their_owners(lone: RunningStack) -> None:
    gw = lone
    ds = gw.stack.dataset
    yesterday = datetime.fromisoformat(ds.anchor).replace(hour=0, minute=0, second=0,
                                                          microsecond=0) - timedelta(days=1)
    moved = next(m for m in ds.meters if len(m["owners"]) > 1 and not m["airplane_mode"])
    noon = datetime.fromisoformat(moved["owners"][1]["valid_from"])
    assert noon.date() == yesterday.date()
    single = [m for m in ds.meters if len(m["owners"]) == 1 and not m["airplane_mode"]
              and m["utility"] == "electricity"][:5]
    silenced = next(m for m in ds.meters if m["airplane_mode"])
    days = [a_day(moved["serial"], yesterday),  # 0: cut at the owner change
            *[a_day(m["serial"], yesterday, operator=m["owners"][0]["tenant"]) for m in single],
            a_day(silenced["serial"], yesterday),  # 6: airplane mode
            a_day("1SAG9999999999", yesterday),  # 7: no owner
            a_day(single[0]["serial"], yesterday + timedelta(hours=23), n=4),  # 8: overlaps
            a_day(single[1]["serial"], yesterday, obis="1-0:2.8.1", operator="farys")]  # 9
    batch = {"format": FORMAT, "batch_id": "HES-DAYS-1", "source": "hes", "meter_days": days}
    body = json.dumps(batch).encode()
    status, doc = post_raw(gw, body)
    assert status == 202, doc
    assert doc["format"] == FORMAT and doc["meter_days"] == len(days)
    assert doc["received"] == 96 * (len(days) - 1) + 4
    assert doc["queued"] + doc["quarantined"] + doc["refused"] == doc["received"]
    runs = {(q["index"], q["first"], q["count"], q["reason"]) for q in doc["quarantine"]}
    assert runs == {(6, 0, 96, "airplane-mode"), (7, 0, 96, "no-owner"),
                    (8, 0, 4, "duplicate"), (9, 0, 96, "owner-mismatch")}
    # The moved meter: its morning to the first owner, its afternoon to the second,
    # cut at the exact quarter-hour.
    cut = (noon - yesterday) // timedelta(minutes=15)
    before, after = moved["owners"][0]["tenant"], moved["owners"][1]["tenant"]
    wait_for(lambda: any(m["meter"] == moved["serial"] for m in meter_days(gw, after)))
    wait_for(lambda: any(m["meter"] == moved["serial"] for m in meter_days(gw, before)))
    (morning,) = [m for m in meter_days(gw, before) if m["meter"] == moved["serial"]]
    (afternoon,) = [m for m in meter_days(gw, after) if m["meter"] == moved["serial"]]
    assert morning["values"] == days[0]["values"][:cut]
    assert datetime.fromisoformat(afternoon["start"]) == noon
    assert afternoon["values"] == days[0]["values"][cut:]
    for m in single:
        owner = m["owners"][0]["tenant"]
        wait_for(lambda o=owner, s=m["serial"]: any(d["meter"] == s
                                                   for d in meter_days(gw, o)))
    for tenant in {m["owners"][0]["tenant"] for m in single} | {before, after}:
        for p in parts(gw, tenant):
            assert p["kind"] == KIND and p["format"] == FORMAT and p["tenant"] == tenant
            assert p["readings"] == sum(len(d["values"]) for d in p["meter_days"])
            for d in p["meter_days"]:  # D1: exactly its meters, no routing hints
                assert "operator" not in d and "via" not in d
                owners = [o["tenant"] for o in next(x for x in ds.meters
                                                    if x["serial"] == d["meter"])["owners"]]
                assert tenant in owners
    # Delivered: nothing of the readings stays in the gateway's store.
    wait_for(lambda: all(p.status == "delivered" for p in gw.stack.gateway.outbox.parts()))
    raw = b"".join(p.read_bytes() for p in (gw.stack.work_dir).glob("outbox.db*"))
    assert b"1SAG" not in raw

    # The same bytes again: the same outcome, nothing delivered twice.
    counts = {t: len(parts(gw, t)) for t in (before, after)}
    status, again = post_raw(gw, body)
    assert status == 202 and {p["status"] for p in again["parts"]} == {"already-queued"}
    assert again["received"] == doc["received"] and again["quarantined"] == doc["quarantined"]
    time.sleep(0.3)
    assert {t: len(parts(gw, t)) for t in (before, after)} == counts
    # The same id with other bytes is another batch: refused, whatever changed.
    status, problem = post_raw(gw, json.dumps(batch, indent=1).encode())
    assert status == 409 and problem["incident"]


def test_hes_simulator_pushes_meter_days_and_its_misroute_is_caught(lone: RunningStack) -> None:
    gw = lone
    out = gw.sim("hes", "POST", "/_sim/push", {"batch_id": "HES-SIM-D1",
                                                "format": FORMAT}).json
    assert out["status"] == 202, out
    answer = out["answer"]
    assert answer["quarantined"] == 0 and answer["refused"] == 0 and answer["queued"] > 0
    water = {m["serial"] for m in gw.stack.dataset.meters
             if m["utility"] == "water" and not m["airplane_mode"]}
    for tenant in ("pidpa", "farys"):
        wait_for(lambda t=tenant: len(parts(gw, t)) >= 1)
    before = gw.metric("gateway_isolation_violations_total", tenant="hes-operator",
                       upstream="push", direction="push")
    gw.fault("hes", "misroute")
    try:
        out = gw.sim("hes", "POST", "/_sim/push", {"batch_id": "HES-SIM-D2",
                                                    "format": FORMAT}).json
    finally:
        gw.fault("hes", "none")
    assert out["status"] == 202
    caught = [q for q in out["answer"]["quarantine"] if q["reason"] == "owner-mismatch"]
    carried = {m["serial"] for m in gw.stack.dataset.meters
               if m["utility"] == "water" and m.get("paired_with")}
    assert {q["meter"] for q in caught} == carried & water
    # Counted per reading, like the per-record format.
    assert gw.metric("gateway_isolation_violations_total", tenant="hes-operator",
                     upstream="push", direction="push") == before + sum(q["count"]
                                                                         for q in caught)
    for dso in ("ores", "fluvius", "sibelga", "resa"):
        wait_for(lambda d=dso: len(parts(gw, d)) >= 2)
        assert not any(m["meter"] in water for m in meter_days(gw, dso))


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_a_meter_day_with_a_key_twice_reaches_nobody(lone: RunningStack, encoding: str) -> None:
    """D1: the router must not read one "meter" while a receiver reads another
    (meter-days are forwarded as posted): the batch is refused whole, 400,
    however the body is encoded (RFC 8259 §8.1 bodies other than UTF-8 take
    another parse)."""
    gw = lone
    ds = gw.stack.dataset
    yesterday = datetime.fromisoformat(ds.anchor).replace(hour=0, minute=0, second=0,
                                                          microsecond=0) - timedelta(days=1)
    single = [m for m in ds.meters if len(m["owners"]) == 1 and not m["airplane_mode"]]
    ores = next(m for m in single if m["owners"][0]["tenant"] == "ores")
    fluvius = next(m for m in single if m["owners"][0]["tenant"] == "fluvius")
    day = json.dumps(a_day(ores["serial"], yesterday))
    forged = day.replace('{"meter"', '{"meter": "' + fluvius["serial"] + '", "meter"', 1)
    body = ('{"format": "' + FORMAT + '", "batch_id": "HES-DUP-1", "source": "hes", '
            '"meter_days": [' + forged + "]}").encode(encoding)
    status, problem = post_raw(gw, body)
    assert status == 400 and problem["incident"], problem
    event = next(e for e in gw.audit_events() if e.get("incident") == problem["incident"])
    assert event["reason"] == "body-duplicate-key"
    time.sleep(0.3)
    assert parts(gw, "ores") == [] and parts(gw, "fluvius") == []
    assert gw.stack.gateway.outbox.parts() == []
