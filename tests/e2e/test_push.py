"""Pushed HES readings end to end (D5): each operator's receiver
gets exactly its records, quarantine holds exactly the bad ones, nothing is
lost, nothing is kept."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.core.identifiers import with_check_digit
from gateway.demo.simulators import CONTROL_HEADER

from .conftest import HOST, RunningStack, start_stack


@pytest.fixture()
def lone(tmp_path: Path) -> Iterator[RunningStack]:
    gw = start_stack(tmp_path)
    yield gw
    gw.stop()


def post_batch(gw: RunningStack, batch: dict[str, Any], who: tuple[str, str] =
               ("hes-operator", "pusher")) -> tuple[int, dict[str, Any]]:
    resp = gw.client(*who).request("POST", "/push/hes/batches", body=batch)
    return resp.status, resp.json


def receiver(gw: RunningStack, method: str, path: str, body: Any = None) -> Any:
    conn = http.client.HTTPSConnection(HOST, gw.stack.receivers_port,
                                       context=gw.context("ores"), timeout=10)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers={CONTROL_HEADER: gw.stack.control_token,
                              "Content-Type": "application/json"})
        resp = conn.getresponse()
        return json.loads(resp.read())
    finally:
        conn.close()


def received(gw: RunningStack, tenant: str) -> list[dict[str, Any]]:
    parts = receiver(gw, "GET", f"/_sim/received/{tenant}")["parts"]
    return [r for p in parts.values() for r in p["records"]]


def wait_for(predicate: Any, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.05)


def reading(meter: str, at: datetime, obis: str = "1-0:1.8.1", **extra: Any) -> dict[str, Any]:
    return {"meter": meter, "timestamp": at.isoformat(), "obis": obis, "value": 12.5,
            "unit": "kWh", "quality": "01", **extra}


def mixed_batch(gw: RunningStack, batch_id: str = "HES-2026-0001") -> tuple[dict[str, Any],
                                                                            dict[str, Any]]:
    """A day of readings for all seven companies plus the hard cases; returns
    the batch and the expectation (tenant -> keys, quarantine index -> reason)."""
    ds = gw.stack.dataset
    anchor = datetime.fromisoformat(ds.anchor)
    yesterday = anchor - timedelta(days=1)
    records: list[dict[str, Any]] = []
    expect: dict[str, Any] = {"parts": {}, "quarantine": {}}

    def add(rec: dict[str, Any], owner: str | None, reason: str | None = None) -> None:
        if reason is not None:
            expect["quarantine"][len(records)] = reason
        else:
            assert owner is not None
            expect["parts"].setdefault(owner, set()).add((rec["meter"], rec["timestamp"]))
        records.append(rec)

    for m in ds.meters:
        owners = m["owners"]
        if m["airplane_mode"]:
            add(reading(m["serial"], yesterday + timedelta(hours=1)), None, "airplane-mode")
            continue
        if len(owners) > 1:  # changed owner yesterday at noon
            add(reading(m["serial"], yesterday + timedelta(hours=6)), owners[0]["tenant"])
            add(reading(m["serial"], yesterday + timedelta(hours=18)), owners[1]["tenant"])
            continue
        extra = {"via": m["paired_with"]} if m["paired_with"] else {}
        unit = {"water": ("8-0:1.0.0", "m3"), "gas": ("0-1:24.2.3", "m3")}.get(m["utility"])
        rec = reading(m["serial"], yesterday + timedelta(hours=2), **extra)
        if unit:
            rec["obis"], rec["unit"] = unit
        add(rec, owners[0]["tenant"])
    add(reading("1SAG9999999999", yesterday), None, "no-owner")
    good_ean = ds.access_points[2]
    bad = with_check_digit(good_ean["ean"][:17])
    bad = bad[:-1] + str((int(bad[-1]) + 1) % 10)
    add(reading(good_ean["meter"]["serial"], yesterday + timedelta(hours=3), ean=bad), None,
        "bad-ean")
    return {"batch_id": batch_id, "source": "hes", "records": records}, expect


def test_mixed_batch_reaches_exactly_its_owners(lone: RunningStack) -> None:
    gw = lone
    batch, expect = mixed_batch(gw)
    status, doc = post_batch(gw, batch)
    assert status == 202, doc
    assert doc["received"] == len(batch["records"])
    assert doc["queued"] + doc["quarantined"] + doc["refused"] == doc["received"]
    assert {q["index"]: q["reason"] for q in doc["quarantine"]} == expect["quarantine"]
    assert len({p["tenant"] for p in doc["parts"]}) == 7  # the whole consortium
    for tenant, keys in expect["parts"].items():
        wait_for(lambda t=tenant, k=keys: len(received(gw, t)) == len(k))
        got = {(r["meter"], r["timestamp"]) for r in received(gw, tenant)}
        assert got == keys, tenant
        assert all("via" not in r and "operator" not in r for r in received(gw, tenant))
    # Delivered: nothing of the readings stays in the gateway's store.
    wait_for(lambda: gw.metric("gateway_outbox_pending", tenant="fluvius") == 0)
    outbox = gw.stack.gateway.outbox
    assert all(p.status == "delivered" for p in outbox.parts())
    raw = (gw.stack.work_dir / "outbox.db").read_bytes()
    for meter in ("1SAG", "3WTR"):
        assert meter.encode() not in raw
    events = [e for e in gw.audit_events() if e.get("event") == "push-batch"]
    assert events[-1]["received"] == doc["received"] and "records" not in events[-1]
    assert gw.metric("gateway_push_records_total", source="hes-operator", tenant="ores",
                     outcome="delivered") > 0


def test_repost_is_idempotent_and_reuse_is_refused(lone: RunningStack) -> None:
    gw = lone
    batch, expect = mixed_batch(gw, "HES-2026-0002")
    assert post_batch(gw, batch)[0] == 202
    status, doc = post_batch(gw, batch)
    assert status == 202 and {p["status"] for p in doc["parts"]} == {"already-queued"}
    wait_for(lambda: len(received(gw, "pidpa")) == len(expect["parts"]["pidpa"]))
    time.sleep(0.5)
    assert len(received(gw, "pidpa")) == len(expect["parts"]["pidpa"])  # not twice
    batch["records"][0]["value"] = 99.0
    status, problem = post_batch(gw, batch)
    assert status == 409 and problem["incident"]


def test_down_receiver_fills_only_its_own_queue(lone: RunningStack) -> None:
    gw = lone
    receiver(gw, "POST", "/_sim/receivers/fluvius/mode", {"mode": "down"})
    batch, expect = mixed_batch(gw, "HES-2026-0003")
    assert post_batch(gw, batch)[0] == 202
    wait_for(lambda: len(received(gw, "ores")) == len(expect["parts"]["ores"]))
    wait_for(lambda: len(received(gw, "farys")) == len(expect["parts"]["farys"]))
    assert received(gw, "fluvius") == []
    wait_for(lambda: gw.metric("gateway_outbox_pending", tenant="fluvius") == 1)
    # Back-pressure: the full queue refuses that tenant's records only.
    # A bound every tenant's part fits into, but not fluvius's second one.
    limit = max(len(keys) for keys in expect["parts"].values())
    assert 2 * len(expect["parts"]["fluvius"]) > limit
    gw.stack.gateway.push.max_pending_records = limit
    batch2, _ = mixed_batch(gw, "HES-2026-0004")
    status, doc = post_batch(gw, batch2)
    assert status == 429
    refused = {p["tenant"] for p in doc["parts"] if p["status"] == "refused-queue-full"}
    assert refused == {"fluvius"}
    assert doc["queued"] + doc["quarantined"] + doc["refused"] == doc["received"]
    gw.stack.gateway.push.max_pending_records = 5_000_000
    receiver(gw, "POST", "/_sim/receivers/fluvius/mode", {"mode": "up"})
    # The retry schedule brings it in once the receiver is back.
    gw.stack.gateway.outbox.clock = lambda: datetime.now(UTC) + timedelta(hours=1)
    wait_for(lambda: len(received(gw, "fluvius")) == len(expect["parts"]["fluvius"]))


def test_poison_part_becomes_a_dead_letter(lone: RunningStack) -> None:
    gw = lone
    receiver(gw, "POST", "/_sim/receivers/sibelga/mode", {"mode": "poison"})
    batch, _ = mixed_batch(gw, "HES-2026-0005")
    assert post_batch(gw, batch)[0] == 202
    wait_for(lambda: any(p.status == "dead" for p in gw.stack.gateway.outbox.parts()))
    dead = [p for p in gw.stack.gateway.outbox.parts(status="dead")]
    assert [p.tenant for p in dead] == ["sibelga"]
    assert gw.metric("gateway_push_records_total", source="hes-operator", tenant="sibelga",
                     outcome="dead_letter") == dead[0].records
    assert any(e.get("event") == "push-dead-letter" for e in gw.audit_events())


def test_misrouted_label_is_caught_and_counted(lone: RunningStack) -> None:
    gw = lone
    meter = next(m for m in gw.stack.dataset.meters if m["owners"][-1]["tenant"] == "pidpa")
    at = datetime.fromisoformat(gw.stack.dataset.anchor) - timedelta(hours=20)
    batch = {"batch_id": "HES-2026-0006", "records": [
        reading(meter["serial"], at, obis="8-0:1.0.0", unit="m3", operator="fluvius")]}
    before = gw.metric("gateway_isolation_violations_total", tenant="hes-operator",
                       upstream="push", direction="push")
    status, doc = post_batch(gw, batch)
    assert status == 202 and doc["quarantine"][0]["reason"] == "owner-mismatch"
    assert gw.metric("gateway_isolation_violations_total", tenant="hes-operator",
                     upstream="push", direction="push") == before + 1


def test_only_the_pusher_may_push(lone: RunningStack) -> None:
    batch, _ = mixed_batch(lone, "HES-2026-0007")
    status, problem = post_batch(lone, batch, ("ores", "api"))
    assert status == 403 and problem["incident"]
    status, problem = post_batch(lone, {"records": []})
    assert status == 400


def test_sigkill_mid_delivery_loses_nothing(tmp_path: Path) -> None:
    """The gateway process is killed (SIGKILL) while parts are pending and in
    flight; after a restart every part arrives, once per idempotency key,
    with exactly its owner's records, and no reading payload remains."""
    import os
    import signal
    import subprocess
    import sys

    from gateway.push import SqliteOutbox
    from gateway.server import OUTBOX_KEY_ID

    from .conftest import REPO as repo
    from .conftest import Client, RunningStack

    stack = RunningStack(__import__("gateway.demo._stack", fromlist=["Stack"]).Stack(
        tenants_dir=repo / "tenants", certs_dir=tmp_path / "certs", work_dir=tmp_path / "work",
        run_gateway=False)).start()
    procs: list[subprocess.Popen[bytes]] = []

    def serve() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config",
                                 str(stack.stack.config_path)], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        port = stack.stack.gateway_ports[0]
        deadline = time.monotonic() + 30
        while True:
            probe = Client(port, stack.context("ores"))
            try:
                probe.get("/itsm/tickets")
                return proc
            except (OSError, http.client.HTTPException):
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
            finally:
                probe.close()

    try:
        gw_proc = serve()
        slow = ["ores", "fluvius", "pidpa", "farys"]
        for t in slow:
            receiver(stack, "POST", f"/_sim/receivers/{t}/mode", {"mode": "down"})
        receiver(stack, "POST", "/_sim/receivers/sibelga/mode", {"mode": "slow"})
        batch, expect = mixed_batch(stack, "HES-2026-0100")
        pusher = Client(stack.stack.gateway_ports[0], stack.context("hes-operator", "pusher"))
        resp = pusher.request("POST", "/push/hes/batches", body=batch)
        assert resp.status == 202, resp.body
        pusher.close()
        time.sleep(0.3)  # sibelga's part is in flight, the others wait for retries
        os.kill(gw_proc.pid, signal.SIGKILL)
        gw_proc.wait(10)
        for t in [*slow, "sibelga"]:
            receiver(stack, "POST", f"/_sim/receivers/{t}/mode", {"mode": "up"})
        # Restarted, the gateway delivers from its durable outbox. The retry
        # schedule may wait a few seconds; the parts are due well within 30 s.
        serve()
        for tenant, keys in expect["parts"].items():
            wait_for(lambda t=tenant, k=keys: len(received(stack, t)) == len(k), timeout=40)
            got = [(r["meter"], r["timestamp"]) for r in received(stack, tenant)]
            assert sorted(got) == sorted(keys), tenant  # each record once, to its owner
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(15)
        stack.stop()
    # After every acknowledgement nothing of the readings is left.
    work = tmp_path / "work"
    from gateway.vault import MasterKeys, SqliteVault
    vault = SqliteVault(work / "vault.db", MasterKeys.from_file(work / "vault.key"))
    outbox = SqliteOutbox(work / "outbox.db", vault.get(OUTBOX_KEY_ID))
    try:
        assert {p.status for p in outbox.parts()} == {"delivered"}
    finally:
        outbox.close()
        vault.close()
    raw = b"".join(p.read_bytes() for p in work.glob("outbox.db*"))
    assert b"1SAG" not in raw and b"3WTR" not in raw


def test_connect_my_home_fan_out_and_status_flow(lone: RunningStack) -> None:
    gw = lone
    # A request of the trusted feed (D1: a booking the feed contradicts goes nowhere).
    booking = next(r for r in gw.stack.dataset.cmh_requests
                   if r["coordinator"] == "ores" and [c["operator"] for c in r["connections"]]
                   == ["ores", "ores", "swde", "proximus"])
    ean = booking["connections"][0]["ean"]
    assert ean
    resp = gw.client("cmh-portal", "pusher").request("POST", "/push/cmh/requests",
                                                      body=booking)
    assert resp.status == 202, resp.body
    assert resp.json["operators"] == ["ores", "proximus", "swde"]
    for op in ("ores", "proximus", "swde"):
        wait_for(lambda o=op: len(received(gw, o)) == 1)
    proximus = received(gw, "proximus")[0]
    assert [c["id"] for c in proximus["connections"]] == [booking["connections"][3]["id"]]
    assert ean not in json.dumps(proximus)  # telecom never sees an energy EAN
    assert "cadastral_parcel" not in proximus["site"]
    assert received(gw, "ores")[0] == booking  # the coordinator: the whole request
    # An operator's status update goes to the portal (proxied) and the
    # coordinating DSO only.
    req = next(r for r in gw.stack.dataset.cmh_requests
               if r["coordinator"] == "ores" and any(c["operator"] == "proximus"
                                                     for c in r["connections"]))
    conn = next(c for c in req["connections"] if c["operator"] == "proximus")
    others = {c["operator"] for c in req["connections"]} - {"ores", "proximus"}
    before = {o: len(received(gw, o)) for o in others}
    path = f"/cmh/requests/{req['id']}/connections/{conn['id']}/status"
    assert gw.client("proximus").request("POST", path, body={"status": "planned"}).status == 200
    wait_for(lambda: len(received(gw, "ores")) == 2)
    status_part = received(gw, "ores")[1]
    assert status_part["by"] == "proximus" and status_part["connection"]["status"] == "planned"
    time.sleep(0.3)
    assert {o: len(received(gw, o)) for o in others} == before


def test_hes_simulator_daily_push_and_its_misroute_fault(lone: RunningStack) -> None:
    """The HES simulator pushes a day of its own meters; its misroute fault
    (water readings labelled for the DSO whose electricity meter carried them)
    is caught by the routing check and counted (D5)."""
    gw = lone
    out = gw.sim("hes", "POST", "/_sim/push", {"batch_id": "HES-SIM-1"}).json
    assert out["status"] == 202, out
    assert out["answer"]["quarantined"] == 0 and out["answer"]["refused"] == 0
    water = {m["serial"] for m in gw.stack.dataset.meters if m["utility"] == "water"}
    before = gw.metric("gateway_isolation_violations_total", tenant="hes-operator",
                       upstream="push", direction="push")
    gw.fault("hes", "misroute")
    try:
        out = gw.sim("hes", "POST", "/_sim/push", {"batch_id": "HES-SIM-2"}).json
    finally:
        gw.fault("hes", "none")
    assert out["status"] == 202
    caught = [q for q in out["answer"]["quarantine"] if q["reason"] == "owner-mismatch"]
    assert {q["meter"] for q in caught} == water  # every water reading, and only those
    assert gw.metric("gateway_isolation_violations_total", tenant="hes-operator",
                     upstream="push", direction="push") == before + len(water)
    # The DSOs never received the water companies' readings.
    for dso in ("ores", "fluvius", "sibelga", "resa"):
        wait_for(lambda d=dso: len(receiver(gw, "GET", f"/_sim/received/{d}")["parts"]) >= 2)
        assert not any(r["meter"] in water for r in received(gw, dso))
