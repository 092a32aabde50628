"""D8, D10 (GDPR data minimisation): each retention rule deletes at the end
of its period, not a second before and not never, on the SQLite files and on
PostgreSQL; every deletion is recorded first in the audit log."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from gateway.audit import AuditWriteFailed
from gateway.config import RetentionConfig
from gateway.push import Outbox, RetryPolicy
from gateway.retention import Retention
from gateway.state import Consultation, PrincipalState
from tests.retention.conftest import T0, World

DEAD = RetryPolicy(max_attempts=1)
LEAVER = ("engie-it", "person", "marc")


def dead_letter(box: Outbox, batch: str, records: int = 3) -> str:
    part_id = f"hes-operator/{batch}/ores"
    box.enqueue(batch_id=batch, source="hes-operator", fingerprint=f"fp-{batch}",
                received=records, quarantined=0,
                parts=[(part_id, "ores", "hes-readings",
                        [{"meter": "1SAG1100042062", "value": i} for i in range(records)])])
    (part,) = box.claim("ores")
    assert box.failed(part, "http-410", DEAD, permanent=True) == "dead"
    return part_id


def consultation(world: World, incident: str, days: float) -> None:
    world.store.add_consultation(Consultation(
        incident, T0 + timedelta(days=days), "ores", "ores/person/carol", "/itsm/persons/{nrn}",
        "85073003328", "hr-administration", "HR-2026-17"))


# -- dead letters (D10: the gateway keeps no meter data) -------------------------------

def test_a_dead_letter_keeps_its_payload_30_days_then_only_its_tombstone(world: World) -> None:
    part_id = dead_letter(world.outbox, "B1")
    retention = world.make()
    world.clock.at(30, seconds=-1)
    assert retention.enforce()["dead-letter-payloads"] == 0  # too early: kept
    (kept,) = world.outbox.parts(status="dead")
    assert world.outbox.payload(kept)[0]["meter"] == "1SAG1100042062"

    world.clock.at(30)
    assert retention.enforce()["dead-letter-payloads"] == 1
    (tomb,) = world.outbox.parts(status="dead")
    with pytest.raises(KeyError):
        world.outbox.payload_bytes(tomb)  # the readings are gone
    # The tombstone: who, when, how many records, why it died.
    assert (tomb.id, tomb.tenant, tomb.source, tomb.records, tomb.last_error) == \
        (part_id, "ores", "hes-operator", 3, "http-410")
    (letter,) = world.outbox.dead_letters()
    assert letter.died_at == T0 and letter.payload_kept is False
    assert world.outbox.requeue_dead(part_id) is False  # nothing left to deliver

    (event,) = world.events()
    assert (event["category"], event["action"], event["count"], event["records"],
            event["parts"], event["policy"]) == \
        ("dead-letter-payloads", "erase-payload", 1, 3, [part_id], "dead_letter_payload_days=30")
    assert event["oldest"] == T0.timestamp()
    assert world.deleted("dead-letter-payloads") == 1
    # Idempotent: again, nothing is erased and nothing recorded.
    assert retention.enforce()["dead-letter-payloads"] == 0
    assert len(world.events()) == 1 and world.deleted("dead-letter-payloads") == 1


def test_a_dead_letter_counts_from_its_death_not_from_its_batch(world: World) -> None:
    world.outbox.enqueue(batch_id="B2", source="hes-operator", fingerprint="fp", received=1,
                         quarantined=0, parts=[("hes-operator/B2/ores", "ores",
                                                "hes-readings", [{"v": 1}])])
    world.clock.at(5)  # retried for five days, then given up
    (part,) = world.outbox.claim("ores")
    world.outbox.failed(part, "http-503", DEAD, permanent=False)
    retention = world.make()
    world.clock.at(34)
    assert retention.enforce()["dead-letter-payloads"] == 0  # 29 days dead
    world.clock.at(35)
    assert retention.enforce()["dead-letter-payloads"] == 1


def test_the_dead_letter_period_is_the_configured_one(world: World) -> None:
    dead_letter(world.outbox, "B3")
    retention = world.make(dead_letter_payload_days=7)
    world.clock.at(7, seconds=-1)
    assert retention.enforce()["dead-letter-payloads"] == 0
    world.clock.at(7)
    assert retention.enforce()["dead-letter-payloads"] == 1


def test_the_outbox_erases_a_payload_only_of_a_letter_dead_long_enough(world: World) -> None:
    part_id = dead_letter(world.outbox, "B7")
    assert world.outbox.erase_dead_payloads([part_id], T0 - timedelta(seconds=1)) == 0
    assert world.outbox.requeue_dead(part_id) is True  # ops: the receiver is fixed
    assert world.outbox.erase_dead_payloads([part_id], T0 + timedelta(days=90)) == 0
    (part,) = world.outbox.due("ores")
    assert len(world.outbox.payload(part)) == 3


def test_a_pending_part_is_never_erased(world: World) -> None:
    world.outbox.enqueue(batch_id="B4", source="hes-operator", fingerprint="fp", received=1,
                         quarantined=0, parts=[("hes-operator/B4/ores", "ores",
                                                "hes-readings", [{"v": 1}])])
    world.clock.at(365)
    assert world.make().enforce()["dead-letter-payloads"] == 0
    (part,) = world.outbox.due("ores")
    assert world.outbox.payload(part) == [{"v": 1}]


# -- disabled principals (D8: leavers) ------------------------------------------------

def disable(world: World, key: tuple[str, str, str] = LEAVER, days: float = 0) -> None:
    world.store.set_principal_state(PrincipalState(
        key, True, T0 + timedelta(days=days), "left the company", "ores/person/alice"))
    world.store.record_last_seen({key: T0 - timedelta(days=1)})


def test_a_leaver_is_deleted_400_days_after_it_was_disabled_with_a_tombstone(
        world: World) -> None:
    disable(world)
    retention = world.make()
    world.clock.at(400, seconds=-1)
    assert retention.enforce()["disabled-principals"] == 0  # too early: kept
    assert [s.key for s in world.store.principal_states()] == [LEAVER]

    world.clock.at(400)
    assert retention.enforce()["disabled-principals"] == 1
    assert world.store.principal_states() == []
    assert LEAVER not in world.store.last_seen()
    (event,) = world.events()
    assert (event["category"], event["action"], event["principal"], event["disabled_at"],
            event["disabled_by"], event["policy"]) == \
        ("disabled-principals", "delete", "engie-it/person/marc", T0.timestamp(),
         "ores/person/alice", "disabled_principal_days=400")
    assert "no longer declared in tenants/" in event["reason"]
    assert world.deleted("disabled-principals") == 1
    assert retention.enforce()["disabled-principals"] == 0 and len(world.events()) == 1


def test_a_leaver_still_declared_in_tenants_is_held_disabled_and_reported(
        world: World) -> None:
    disable(world)
    world.declared.add(LEAVER)  # SECURITY: deleting its row would enable it again
    retention = world.make()
    world.clock.at(4000)
    assert retention.enforce()["disabled-principals"] == 0
    (state,) = world.store.principal_states()
    assert state.disabled and world.events() == []
    principals = retention.report().categories[1]
    assert (principals.kept, principals.due, principals.held) == (1, 0, 1)
    assert principals.items[0].status == "held"
    world.declared.clear()  # removed from the tenant file: now it goes
    assert retention.enforce()["disabled-principals"] == 1


def test_a_principal_enabled_again_is_never_deleted(world: World) -> None:
    disable(world)
    world.store.set_principal_state(PrincipalState(LEAVER, False, T0 + timedelta(days=1),
                                                   "back", "ores/person/alice"))
    world.clock.at(4000)
    assert world.make().enforce()["disabled-principals"] == 0
    assert [s.disabled for s in world.store.principal_states()] == [False]


def test_a_state_that_changed_since_it_was_read_is_not_deleted(world: World) -> None:
    disable(world)
    (read,) = world.store.principal_states()
    disable(world, days=10)  # disabled again, later: its period starts again
    assert world.store.delete_principal_state(read) is False
    assert [s.changed_at for s in world.store.principal_states()] == [T0 + timedelta(days=10)]


# -- the consultation register (D8) ---------------------------------------------------

def test_consultations_are_kept_20_months_then_deleted_and_counted(world: World) -> None:
    consultation(world, "inc-1", 0)
    consultation(world, "inc-2", 0.5)
    consultation(world, "inc-3", 30)
    retention = world.make()
    world.clock.at(610, seconds=-1)
    assert retention.enforce()["consultations"] == 0  # too early: all kept
    assert len(world.store.consultations()) == 3

    world.clock.at(610.5)
    assert retention.enforce()["consultations"] == 2
    assert [c.incident for c in world.store.consultations()] == ["inc-3"]
    (event,) = world.events()
    assert (event["category"], event["count"], event["oldest"], event["policy"]) == \
        ("consultations", 2, T0.timestamp(), "consultation_register_days=610")
    assert "principal" not in event and "resource" not in str(event)  # counted, not named
    assert world.deleted("consultations") == 2
    assert retention.enforce()["consultations"] == 0 and len(world.events()) == 1
    world.clock.at(640)
    assert retention.enforce()["consultations"] == 1


def test_the_register_period_is_the_configured_one(world: World) -> None:
    consultation(world, "inc-1", 0)
    retention = world.make(consultation_register_days=3650)
    world.clock.at(3650, seconds=-1)
    assert retention.enforce()["consultations"] == 0
    world.clock.at(3650)
    assert retention.enforce()["consultations"] == 1


# -- a tenant's notifications (D1, D12) ---------------------------------------------------

def notification(world: World, incident: str, tenant: str, days: float) -> bool:
    world.clock.at(days)
    document = json.dumps({"type": "breach-notification", "incident": incident})
    return world.outbox.enqueue_notifications(incident=incident, source="gateway:breach",
                                              notices=[(tenant, document, None)])


def test_notifications_are_kept_400_days_then_deleted_and_counted(world: World) -> None:
    assert notification(world, "inc-1", "pidpa", 0)
    assert notification(world, "inc-2", "fluvius", 0.5)
    assert notification(world, "inc-3", "pidpa", 30)
    retention = world.make()
    world.clock.at(400, seconds=-1)
    report = {c.category: c for c in retention.report().categories}["notifications"]
    assert (report.kept, report.due, report.oldest) == (3, 0, T0)
    assert report.oldest_due_at == T0 + timedelta(days=400)
    assert retention.enforce()["notifications"] == 0  # too early: all kept
    assert len(world.outbox.notifications("pidpa", 10)) == 2

    world.clock.at(400.5)
    assert retention.enforce()["notifications"] == 2
    assert [json.loads(d)["incident"] for d in world.outbox.notifications("pidpa", 10)] == [
        "inc-3"]
    assert world.outbox.notifications("fluvius", 10) == []
    (event,) = world.events()
    assert (event["category"], event["count"], event["oldest"], event["policy"]) == \
        ("notifications", 2, T0.timestamp(), "notification_days=400")
    assert "pidpa" not in json.dumps(event)  # counted, not named
    assert world.deleted("notifications") == 2
    assert retention.enforce()["notifications"] == 0 and len(world.events()) == 1
    # The incident stays known: processed again, it notifies nobody twice.
    assert not notification(world, "inc-1", "pidpa", 401)
    assert [json.loads(d)["incident"] for d in world.outbox.notifications("pidpa", 10)] == [
        "inc-3"]


def test_the_notification_period_is_the_configured_one(world: World) -> None:
    notification(world, "inc-1", "pidpa", 0)
    retention = world.make(notification_days=1000)
    world.clock.at(1000, seconds=-1)
    assert retention.enforce()["notifications"] == 0
    world.clock.at(1000)
    assert retention.enforce()["notifications"] == 1


# -- never silently --------------------------------------------------------------------

class BrokenAudit:
    def record(self, event: object) -> None:
        raise AuditWriteFailed("disk full")


def test_an_audit_log_that_cannot_be_written_stops_every_deletion(world: World) -> None:
    dead_letter(world.outbox, "B5")
    disable(world)
    consultation(world, "inc-1", 0)
    notification(world, "inc-2", "pidpa", 0)
    retention = Retention(store=world.store, outbox=world.outbox, declared=lambda key: False,
                          config=RetentionConfig(), audit=BrokenAudit(),  # type: ignore[arg-type]
                          clock=world.clock)
    world.clock.at(5000)
    with pytest.raises(AuditWriteFailed):
        retention.enforce()
    assert world.outbox.dead_letters()[0].payload_kept
    assert len(world.store.principal_states()) == 1
    assert len(world.store.consultations()) == 1
    assert len(world.outbox.notifications("pidpa", 10)) == 1


# -- the report reads only ------------------------------------------------------------

def test_the_report_says_what_is_due_and_when_and_deletes_nothing(world: World) -> None:
    part_id = dead_letter(world.outbox, "B6", records=2)
    disable(world, days=400)
    consultation(world, "inc-1", 0)
    consultation(world, "inc-2", 700)
    notification(world, "inc-3", "pidpa", 300)
    notification(world, "inc-4", "pidpa", 710)
    world.clock.at(720)
    report = world.make().report()
    letters, principals, register, notes = report.categories
    assert (letters.category, letters.kept, letters.due, letters.oldest,
            letters.oldest_due_at) == ("dead-letter-payloads", 1, 1, T0, T0 + timedelta(days=30))
    assert letters.items[0].name == part_id
    assert (principals.kept, principals.due, principals.oldest_due_at) == \
        (1, 0, T0 + timedelta(days=800))
    assert principals.items[0].status == "waiting"
    assert (register.kept, register.due, register.oldest, register.oldest_due_at) == \
        (2, 1, T0, T0 + timedelta(days=610))
    assert (notes.category, notes.kept, notes.due, notes.oldest_due_at) == \
        ("notifications", 2, 1, T0 + timedelta(days=700))
    assert world.outbox.dead_letters()[0].payload_kept  # nothing was deleted
    assert len(world.store.consultations()) == 2 and world.events() == []
    assert len(world.outbox.notifications("pidpa", 10)) == 2

