"""Breach notifications in the outbox (D1, D12), on both backends: one per
incident and owner however often the incident is processed, each stored as
the document its owner reads and as a part for its receiver, audited and
counted once; a tenant reads its own notifications only, newest first."""

from __future__ import annotations

import json
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.audit import ChainedAuditLog
from gateway.audit._format import load_or_create_audit_key
from gateway.core.breach import BreachNotice
from gateway.core.relations.index import RelationIndex
from gateway.metrics import GatewayMetrics
from gateway.push import NOTIFICATIONS_MAX, Outbox, PushService
from gateway.push._delivery import delivery_body
from tests.push.conftest import Clock

AT = datetime(2026, 6, 15, 9, 0, tzinfo=UTC)
CONTACTS = {"pidpa": "mailto:csirt@pidpa.example"}


def service(box: Outbox, tmp: Path) -> tuple[PushService, Path]:
    key, kid = load_or_create_audit_key(tmp)
    log = tmp / "audit.log"
    return PushService(outbox=box, relations=lambda: RelationIndex([]),
                       endpoints={"pidpa": "https://127.0.0.1:1/r", "fluvius": "https://x/r"},
                       client_tls=ssl.create_default_context(), metrics=GatewayMetrics(),
                       audit=ChainedAuditLog(log, key, kid)), log


def notice(incident: str, owner: str, records: int = 1, at: datetime = AT) -> BreachNotice:
    return BreachNotice(incident, owner, at, "hes", "/hes/meters", records, "ores",
                        "foreign-record")


def events(log: Path) -> list[dict[str, object]]:
    lines = (json.loads(line) for line in log.read_text().splitlines() if line)
    return [e for e in lines if e.get("event") == "breach-notification"]


def sent(svc: PushService, owner: str) -> float:
    value = svc.metrics.registry.get_sample_value("gateway_breach_notifications_total",
                                                  {"owner": owner})
    return value or 0.0


def test_an_incident_processed_twice_notifies_each_owner_once(box: Outbox,
                                                               tmp_path: Path) -> None:
    svc, log = service(box, tmp_path)
    notices = [notice("inc-1", "fluvius", 2), notice("inc-1", "pidpa", 1)]
    assert svc.notify_breach(notices, CONTACTS.get) == 2
    assert svc.notify_breach(notices, CONTACTS.get) == 0  # again: nothing
    assert svc.notify_breach(notices[1:], CONTACTS.get) == 0  # a subset: nothing either
    parts = box.parts()
    assert sorted(p.id for p in parts) == ["gateway:breach/inc-1/fluvius",
                                          "gateway:breach/inc-1/pidpa"]
    assert {p.kind for p in parts} == {"breach-notification"}
    assert [len(svc.notifications(t)) for t in ("fluvius", "pidpa")] == [1, 1]
    assert sent(svc, "fluvius") == 1 and sent(svc, "pidpa") == 1
    found = events(log)
    assert sorted((e["tenant"], e["violation"], e["records"], e["delivery"]) for e in found) \
        == [("fluvius", "inc-1", 2, "queued"), ("pidpa", "inc-1", 1, "queued")]
    assert all(e["incident"] != "inc-1" for e in found)  # each event its own incident id


def test_the_part_delivers_the_document_and_the_owner_reads_it(box: Outbox,
                                                                 tmp_path: Path) -> None:
    svc, _ = service(box, tmp_path)
    svc.notify_breach([notice("inc-2", "pidpa", 3)], CONTACTS.get)
    (part,) = box.parts()
    body = json.loads(delivery_body(part, box.payload_bytes(part)))
    assert body["kind"] == "breach-notification" and body["tenant"] == "pidpa"
    assert body["batch_id"] == "inc-2"
    assert body["notification"] == svc.notifications("pidpa")[0]
    assert body["notification"]["records"] == 3
    assert body["notification"]["security_contact"] == "mailto:csirt@pidpa.example"
    assert body["notification"]["requested_by"] == "ores"


def test_an_owner_without_a_receiver_can_still_read_it(box: Outbox, tmp_path: Path) -> None:
    svc, log = service(box, tmp_path)
    assert svc.notify_breach([notice("inc-3", "farys")], CONTACTS.get) == 1
    assert box.parts() == []  # nothing waits for a receiver that does not exist
    (doc,) = svc.notifications("farys")
    assert doc["incident"] == "inc-3" and doc["security_contact"] is None
    assert [e["delivery"] for e in events(log)] == ["no-endpoint"]


def test_a_tenant_reads_its_own_newest_first_and_bounded(box: Outbox, tmp_path: Path,
                                                          clock: Clock) -> None:
    svc, _ = service(box, tmp_path)
    for i in range(NOTIFICATIONS_MAX + 5):
        clock.advance(1)
        svc.notify_breach([notice(f"inc-{i:03d}", "pidpa", at=AT + timedelta(seconds=i))],
                          CONTACTS.get)
    svc.notify_breach([notice("other", "fluvius")], CONTACTS.get)
    mine = svc.notifications("pidpa")
    assert len(mine) == NOTIFICATIONS_MAX
    assert [d["incident"] for d in mine[:2]] == [f"inc-{NOTIFICATIONS_MAX + 4:03d}",
                                                 f"inc-{NOTIFICATIONS_MAX + 3:03d}"]
    assert {d["owner"] for d in mine} == {"pidpa"}
    assert [d["incident"] for d in svc.notifications("pidpa", 2)] == [
        d["incident"] for d in mine[:2]]
    assert [d["incident"] for d in svc.notifications("fluvius")] == ["other"]
    assert svc.notifications("ores") == []  # the requester: nothing
