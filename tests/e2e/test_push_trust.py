"""A hostile pusher, over real mTLS (D1, D12): each intake takes only its own
shared system's pushers, batch ids are a namespace per system, bookings and
readings are checked against the trusted feed, and the demo's files that hold
tenant data are readable by their owner only."""

from __future__ import annotations

import copy
import json
import sqlite3
import stat
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.core.model import Caller, Principal, Tenant
from gateway.errors import RequestRefused
from gateway.push import SqliteOutbox

from .conftest import RunningStack, start_stack
from .test_push import receiver, wait_for

HES = ("hes-operator", "pusher")
PORTAL = ("cmh-portal", "pusher")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    gw = start_stack(tmp_path_factory.mktemp("trust"))
    yield gw
    gw.stop()


def parts(gw: RunningStack, tenant: str) -> dict[str, dict[str, Any]]:
    """What the tenant's receiver holds: idempotency key -> delivered body."""
    return dict(receiver(gw, "GET", f"/_sim/received/{tenant}")["parts"])


def settle(gw: RunningStack) -> None:
    """Every part the outbox holds has been tried (nothing pending any more)."""
    wait_for(lambda: all(p.status != "pending" for p in gw.stack.gateway.outbox.parts()))
    time.sleep(0.3)


def soc_events(gw: RunningStack) -> list[dict[str, Any]]:
    path = gw.stack.work_dir / "soc.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def audit_of(gw: RunningStack, incident: str) -> list[dict[str, Any]]:
    return [e for e in gw.audit_events() if e.get("incident") == incident]


def ores_meter(gw: RunningStack) -> dict[str, Any]:
    return next(m for m in gw.stack.dataset.meters
                if [o["tenant"] for o in m["owners"]] == ["ores"]
                and m["utility"] == "electricity" and not m["airplane_mode"])


def fluvius_ean(gw: RunningStack) -> str:
    return str(next(ap["ean"] for ap in gw.stack.dataset.access_points
                    if ap["grid_operator"] == "fluvius"))


def yesterday(gw: RunningStack, hours: float) -> str:
    anchor = datetime.fromisoformat(gw.stack.dataset.anchor)
    return (anchor - timedelta(days=1) + timedelta(hours=hours)).isoformat()


def reading(meter: str, at: str, **extra: Any) -> dict[str, Any]:
    return {"meter": meter, "timestamp": at, "obis": "1-0:1.8.1", "value": 999.9,
            "unit": "kWh", "quality": "01", **extra}


def feed_request(gw: RunningStack, coordinator: str = "ores") -> dict[str, Any]:
    """A request of the demo feed, as the portal holds it."""
    return copy.deepcopy(next(r for r in gw.stack.dataset.cmh_requests
                              if r["coordinator"] == coordinator
                              and any(c["operator"] == "swde" for c in r["connections"])))


def assert_refused_and_reported(gw: RunningStack, status: int, problem: dict[str, Any],
                                reason: str, who: tuple[str, str]) -> None:
    assert status == 403
    assert problem["status"] == 403 and problem["incident"]
    assert problem["type"].startswith("urn:shared-grid-gateway:problem:")
    (event,) = audit_of(gw, problem["incident"])
    assert (event["tenant"], event["principal"]) == who
    assert (event["status"], event["reason"], event["decision"]) == (403, reason, "deny")
    alerts = [e for e in soc_events(gw) if e["incident"] == problem["incident"]]
    assert [(e["kind"], e["reason"], e["tenant"]) for e in alerts
            if e["kind"] == "push-intake-refused"] == [("push-intake-refused", reason, who[0])]


# -- each intake takes only its own system's pushers ---------------------------

def test_the_portal_may_not_push_hes_readings(stack: RunningStack) -> None:
    gw = stack
    meter = next(m for m in gw.stack.dataset.meters
                 if [o["tenant"] for o in m["owners"]] == ["fluvius"]
                 and m["utility"] == "electricity" and not m["airplane_mode"])
    settle(gw)  # what earlier tests pushed has arrived: it is not this test's
    before = parts(gw, "fluvius")
    # Reproduced: a fake 999.9 kWh reading reached Fluvius's receiver.
    fake = {"batch_id": "HES-TRUST-1", "records": [reading(meter["serial"], yesterday(gw, 3))]}
    resp = gw.client(*PORTAL).request("POST", "/push/hes/batches", body=fake)
    assert_refused_and_reported(gw, resp.status, resp.json, "push-intake-foreign",
                                ("cmh-portal", "pusher"))
    # ...and the empty batch with the HES's next id no longer blocks the HES (was 409).
    resp = gw.client(*PORTAL).request("POST", "/push/hes/batches",
                                      body={"batch_id": "HES-TRUST-2", "records": []})
    assert resp.status == 403
    real = {"batch_id": "HES-TRUST-2",
            "records": [reading(meter["serial"], yesterday(gw, 4), value=1.5)]}
    resp = gw.client(*HES).request("POST", "/push/hes/batches", body=real)
    assert resp.status == 202 and resp.json["queued"] == 1, resp.body
    settle(gw)
    new = [p for k, p in parts(gw, "fluvius").items() if k not in before]
    assert [r["value"] for p in new for r in p["records"]] == [1.5]


def test_the_hes_may_not_push_a_booking(stack: RunningStack) -> None:
    gw = stack
    booking = feed_request(gw)
    operators = {c["operator"] for c in booking["connections"]}
    settle(gw)  # what earlier tests pushed has arrived: it is not this test's
    before = {op: parts(gw, op) for op in operators}
    resp = gw.client(*HES).request("POST", "/push/cmh/requests", body=booking)
    assert_refused_and_reported(gw, resp.status, resp.json, "push-intake-foreign",
                                ("hes-operator", "pusher"))
    settle(gw)
    assert {op: parts(gw, op) for op in operators} == before


def test_a_partner_without_the_pusher_role_is_refused_and_reported(
        stack: RunningStack) -> None:
    resp = stack.client("ores").request("POST", "/push/hes/batches",
                                        body={"batch_id": "HES-TRUST-3", "records": []})
    assert_refused_and_reported(stack, resp.status, resp.json, "not-a-pusher", ("ores", "api"))


def test_the_refusal_comes_before_the_body_is_read(stack: RunningStack) -> None:
    """A foreign pusher's body is never parsed: what would be a 400 is a 403."""
    resp = stack.client(*PORTAL).request("POST", "/push/hes/batches", body="not a batch")
    assert resp.status == 403
    resp = stack.client(*HES).request("POST", "/push/hes/batches", body="not a batch")
    assert resp.status == 400  # the HES itself gets the body's answer
    # A body announced far over the cap: the HES would get 413, a foreign pusher 403.
    head = (b"POST /push/hes/batches HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n")
    assert stack.raw("cmh-portal", head, "pusher").startswith(b"HTTP/1.1 403 ")
    assert stack.raw("hes-operator", head, "pusher").startswith(b"HTTP/1.1 413 ")


def test_the_push_service_itself_refuses_a_foreign_pusher(stack: RunningStack) -> None:
    """Defence in depth: the intakes check the caller even when called directly."""
    push = stack.stack.gateway.push
    assert push is not None
    registry = stack.stack.registry
    portal = Caller(*registry.principal("cmh-portal", "service", "pusher") or ())
    hes = Caller(*registry.principal("hes-operator", "service", "pusher") or ())
    with pytest.raises(RequestRefused) as refused:
        push.intake(portal, b'{"batch_id": "HES-TRUST-4", "records": []}')
    assert (refused.value.status, refused.value.reason) == (403, "push-intake-foreign")
    with pytest.raises(RequestRefused) as refused:
        push.intake_cmh(hes, json.dumps(feed_request(stack)).encode(), {}, frozenset())
    assert (refused.value.status, refused.value.reason) == (403, "push-intake-foreign")


# -- batch ids are a namespace per source system --------------------------------

def test_one_systems_batch_id_never_blocks_anothers(stack: RunningStack) -> None:
    gw = stack
    push = gw.stack.gateway.push
    assert push is not None
    meter = ores_meter(gw)
    # A second system that owns a HES intake (another HES provider), and the HES itself.
    other_tenant = Tenant("hes-two", "HES two", "shared-system", push_intake="hes")
    other = Caller(other_tenant, Principal("hes-two", "service", "pusher",
                                           frozenset({"pusher"})))
    settle(gw)  # what earlier tests pushed has arrived: it is not this test's
    before = parts(gw, "ores")
    taken = {"batch_id": "HES-TRUST-NS", "records": [
        reading(meter["serial"], yesterday(gw, 5), value=7.0)]}
    status, doc, _ = push.intake(other, json.dumps(taken).encode())
    assert status == 202 and doc["queued"] == 1
    mine = {"batch_id": "HES-TRUST-NS", "records": [
        reading(meter["serial"], yesterday(gw, 6), value=8.0)]}
    resp = gw.client(*HES).request("POST", "/push/hes/batches", body=mine)
    assert resp.status == 202, resp.body  # not 409: the other system's id is not ours
    assert resp.json["parts"][0]["status"] == "queued"
    keys = {doc["parts"][0]["idempotency_key"], resp.json["parts"][0]["idempotency_key"]}
    assert keys == {"hes-two/HES-TRUST-NS/ores", "hes-operator/HES-TRUST-NS/ores"}
    # Each system's re-post is idempotent; its reuse with other content is still 409.
    resp = gw.client(*HES).request("POST", "/push/hes/batches", body=mine)
    assert resp.status == 202 and resp.json["parts"][0]["status"] == "already-queued"
    mine["records"][0]["value"] = 9.0
    assert gw.client(*HES).request("POST", "/push/hes/batches", body=mine).status == 409
    settle(gw)
    new = {k: [r["value"] for r in p["records"]] for k, p in parts(gw, "ores").items()
           if k not in before}
    assert new == {"hes-two/HES-TRUST-NS/ores": [7.0], "hes-operator/HES-TRUST-NS/ores": [8.0]}


V0_SCHEMA = """
CREATE TABLE batches (batch_id TEXT PRIMARY KEY, source TEXT NOT NULL,
    fingerprint TEXT NOT NULL, received INTEGER NOT NULL, quarantined INTEGER NOT NULL,
    created TEXT NOT NULL);
CREATE TABLE parts (id TEXT PRIMARY KEY, batch_id TEXT NOT NULL, tenant TEXT NOT NULL,
    kind TEXT NOT NULL, records INTEGER NOT NULL, created TEXT NOT NULL,
    status TEXT NOT NULL, attempts INTEGER NOT NULL, next_attempt_at TEXT NOT NULL,
    last_error TEXT, nonce BLOB, payload BLOB, done_at TEXT);
CREATE INDEX parts_queue ON parts (tenant, status, created);
"""


def test_an_outbox_written_before_is_migrated_and_keeps_its_ids(tmp_path: Path) -> None:
    """An outbox.db of the previous schema (batches keyed by id alone) keeps
    working: its pending part is delivered under its old idempotency key, a
    re-post of its batch is recognised, and another system may use the id."""
    path = tmp_path / "outbox.db"
    key = bytes(range(32))
    created = "2026-06-14T00:00:00.000000+00:00"
    nonce = bytes(12)
    payload = AESGCM(key).encrypt(nonce, b'[{"meter":"1SAG0000000001"}]', b"B-1/ores")
    db = sqlite3.connect(path)
    db.executescript(V0_SCHEMA)
    db.execute("INSERT INTO batches VALUES ('B-1', 'hes-operator', 'fp', 1, 0, ?)", (created,))
    db.execute("INSERT INTO parts VALUES ('B-1/ores', 'B-1', 'ores', 'hes-readings', 1, ?, "
               "'pending', 0, ?, NULL, ?, ?, NULL)", (created, created, nonce, payload))
    db.commit()
    db.close()
    path.chmod(0o644)  # as the previous release left it
    outbox = SqliteOutbox(path, key)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        known = outbox.batch("B-1", "hes-operator")
        assert known is not None and known["fingerprint"] == "fp"
        assert outbox.batch("B-1", "hes-two") is None
        assert outbox.part_of("hes-operator", "B-1", "ores") == ("B-1/ores", "pending")
        (due,) = outbox.due("ores")
        assert (due.id, due.source) == ("B-1/ores", "hes-operator")
        assert outbox.payload_bytes(due) == b'[{"meter":"1SAG0000000001"}]'
        outbox.enqueue(batch_id="B-1", source="hes-two", fingerprint="other", received=1,
                       quarantined=0, parts=[("hes-two/B-1/ores", "ores", "hes-readings",
                                              [{"meter": "1SAG0000000001"}])])
        assert outbox.batch("B-1", "hes-two")["fingerprint"] == "other"  # type: ignore[index]
        assert {p.id for p in outbox.parts()} == {"B-1/ores", "hes-two/B-1/ores"}
    finally:
        outbox.close()
    again = SqliteOutbox(path, key)  # opening a migrated file changes nothing
    try:
        assert again.batch("B-1", "hes-operator")["fingerprint"] == "fp"  # type: ignore[index]
        # with leases, the breach notifications' register, and the payloads apart
        assert again._db.execute("PRAGMA user_version").fetchone()[0] == 5
        names = [r[1] for r in again._db.execute("PRAGMA table_info(parts)")]
        assert {"lease_owner", "lease_token", "lease_until"} <= set(names)
        assert "payload" not in names  # in a table of its own: read above from there
        assert again.notifications("ores", 10) == []
    finally:
        again.close()


# -- bookings are checked against the trusted feed ---------------------------------

def post_booking(gw: RunningStack, booking: dict[str, Any]) -> dict[str, Any]:
    resp = gw.client(*PORTAL).request("POST", "/push/cmh/requests", body=booking)
    assert resp.status == 202, resp.body
    return dict(resp.json)


def test_a_booking_with_the_wrong_coordinator_reaches_nobody(stack: RunningStack) -> None:
    gw = stack
    booking = feed_request(gw, "ores")
    tenants = {"resa", "ores"} | {c["operator"] for c in booking["connections"]}
    settle(gw)  # what earlier tests pushed has arrived: it is not this test's
    before = {t: parts(gw, t) for t in tenants}
    violations = gw.metric("gateway_isolation_violations_total", tenant="cmh-portal",
                           upstream="push", direction="push")
    # Reproduced: RESA received the household's name, phone, parcel and an ORES EAN.
    booking["coordinator"] = "resa"
    doc = post_booking(gw, booking)
    assert (doc["queued"], doc["quarantined"], doc["operators"]) == (0, 1, [])
    assert doc["quarantine"] == [{"reason": "coordinator-mismatch", "connection": None}]
    (event,) = [e for e in audit_of(gw, doc["incident"]) if e["event"] == "cmh-fanout"]
    assert event["outcome"] == "quarantined"
    assert event["quarantine_reasons"] == {"coordinator-mismatch": 1}
    assert gw.metric("gateway_isolation_violations_total", tenant="cmh-portal",
                     upstream="push", direction="push") == violations + 1
    settle(gw)
    assert {t: parts(gw, t) for t in tenants} == before
    # The portal may then post the corrected booking under the same id.
    booking["coordinator"] = "ores"
    doc = post_booking(gw, booking)
    assert doc["queued"] == 1 and "resa" not in doc["operators"]
    wait_for(lambda: len(parts(gw, "ores")) == len(before["ores"]) + 1)


def test_a_connection_for_another_operator_reaches_nobody(stack: RunningStack) -> None:
    gw = stack
    booking = feed_request(gw, "resa")
    water = next(c for c in booking["connections"] if c["operator"] == "swde")
    water["operator"] = "farys"  # a water company the feed does not name for it
    booking["connections"].append({"id": "CMH-FOREIGN-1", "operator": "orange",
                                   "utility": "telecom", "status": "requested"})
    tenants = {"resa", "swde", "farys", "orange", "telenet"}
    settle(gw)  # what earlier tests pushed has arrived: it is not this test's
    before = {t: parts(gw, t) for t in tenants}
    doc = post_booking(gw, booking)
    assert doc["quarantine"] == [{"reason": "operator-mismatch", "connection": water["id"]}]
    assert doc["queued"] == 0
    settle(gw)
    assert {t: parts(gw, t) for t in tenants} == before


def test_a_booking_the_feed_does_not_know_reaches_nobody(stack: RunningStack) -> None:
    gw = stack
    booking = feed_request(gw, "ores")
    booking["id"] = "CMH20269998"
    doc = post_booking(gw, booking)
    assert doc["quarantine"] == [{"reason": "unknown-request", "connection": None}]


# -- pushed readings carry only what the format defines, and their own EAN ----------

def test_a_reading_with_extra_members_is_never_delivered(stack: RunningStack) -> None:
    gw = stack
    meter = ores_meter(gw)
    settle(gw)  # what earlier tests pushed has arrived: it is not this test's
    before = parts(gw, "ores")
    batch = {"batch_id": "HES-TRUST-FIELDS", "records": [
        reading(meter["serial"], yesterday(gw, 7), name="J. Dupont"),
        reading(meter["serial"], yesterday(gw, 8), serial="1SAG0000000001"),
        reading(meter["serial"], yesterday(gw, 9), customer_ean=fluvius_ean(gw)),
        reading(meter["serial"], yesterday(gw, 10), value=2.5)]}
    resp = gw.client(*HES).request("POST", "/push/hes/batches", body=batch)
    assert resp.status == 202, resp.body
    assert [(q["index"], q["reason"]) for q in resp.json["quarantine"]] == [
        (0, "unexpected-field"), (1, "unexpected-field"), (2, "unexpected-field")]
    settle(gw)
    new = [p for k, p in parts(gw, "ores").items() if k not in before]
    assert [r for p in new for r in p["records"]] == [batch["records"][3]]


def test_an_ores_reading_with_a_fluvius_ean_is_never_delivered(stack: RunningStack) -> None:
    gw = stack
    meter = ores_meter(gw)
    foreign = fluvius_ean(gw)
    settle(gw)  # what earlier tests pushed has arrived: it is not this test's
    before = parts(gw, "ores")
    violations = gw.metric("gateway_isolation_violations_total", tenant="hes-operator",
                           upstream="push", direction="push")
    records = {"batch_id": "HES-TRUST-EAN", "records": [
        reading(meter["serial"], yesterday(gw, 11), ean=foreign),
        reading(meter["serial"], yesterday(gw, 12), ean=meter["ean"], value=3.5)]}
    resp = gw.client(*HES).request("POST", "/push/hes/batches", body=records)
    assert resp.status == 202, resp.body
    assert [(q["index"], q["reason"]) for q in resp.json["quarantine"]] == [(0, "ean-mismatch")]
    start = datetime.fromisoformat(yesterday(gw, 0)).isoformat()
    days = {"format": "meter-days/v1", "batch_id": "HES-TRUST-EAN-D", "meter_days": [
        {"meter": meter["serial"], "start": start, "interval": 3600, "obis": "1-0:2.8.1",
         "unit": "kWh", "values": [0.5] * 4, "quality": "01" * 4, "ean": foreign},
        {"meter": meter["serial"], "start": start, "interval": 3600, "obis": "1-0:2.8.2",
         "unit": "kWh", "values": [0.25] * 4, "quality": "01" * 4, "ean": meter["ean"]}]}
    resp = gw.client(*HES).request("POST", "/push/hes/batches", body=days)
    assert resp.status == 202, resp.body
    assert [(q["index"], q["first"], q["count"], q["reason"])
            for q in resp.json["quarantine"]] == [(0, 0, 4, "ean-mismatch")]
    assert gw.metric("gateway_isolation_violations_total", tenant="hes-operator",
                     upstream="push", direction="push") == violations + 5
    settle(gw)
    new = [p for k, p in parts(gw, "ores").items() if k not in before]
    assert foreign not in json.dumps(new)  # D1: no Fluvius EAN ever reaches ORES
    assert [r["value"] for p in new for r in p.get("records", [])] == [3.5]
    assert [m["obis"] for p in new for m in p.get("meter_days", [])] == ["1-0:2.8.2"]


# -- files that hold tenant data are the owner's only --------------------------------

def test_files_holding_tenant_data_are_owner_only(stack: RunningStack) -> None:
    work = stack.stack.work_dir
    held = ["dataset.json", "relations.json", "outbox.db", "state.db", "usage.db",
            "audit.jsonl", "soc.jsonl", "vault.db"]
    for name in held:
        assert (work / name).exists(), name
    loose = {str(p.relative_to(work)): oct(stat.S_IMODE(p.stat().st_mode))
             for p in work.rglob("*") if p.is_file() and stat.S_IMODE(p.stat().st_mode) & 0o077
             and (p.name.split("-")[0] in held or p.suffix in (".json", ".jsonl", ".db"))}
    assert loose == {}


def test_the_demo_files_are_made_owner_only_when_they_existed(tmp_path: Path,
                                                               stack: RunningStack) -> None:
    """A re-run over files an older demo left world-readable tightens them."""
    for name in ("dataset.json", "relations.json"):
        (tmp_path / name).write_text("{}")
        (tmp_path / name).chmod(0o644)
    written = stack.stack.dataset.write(tmp_path)
    assert [oct(stat.S_IMODE(p.stat().st_mode)) for p in written] == ["0o600", "0o600"]
    assert json.loads(written[1].read_text())["relations"]  # rewritten whole
