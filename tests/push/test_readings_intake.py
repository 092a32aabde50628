"""PushService.intake takes a per-record batch of well-typed records by its
fast path (gateway.core.push.readings) and answers, stores and fingerprints it
as the general path does (D1, D5): a re-post of the same content that takes
the other path is the same batch (``already-queued``), and other content under
the same batch id is still a 409, whichever path each took."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import ChainedAuditLog
from gateway.audit._format import load_or_create_audit_key
from gateway.core.model import Caller, Principal, Relation, Tenant
from gateway.core.relations.index import RelationIndex
from gateway.errors import RequestRefused
from gateway.metrics import GatewayMetrics
from gateway.push import PushService, SqliteOutbox, _service
from tests.push.conftest import KEY

NOW = datetime(2026, 6, 15, 9, 0, tzinfo=UTC)
ORES, FLUVIUS = "1SAG1100042062", "1SAG1100042063"
HES = Caller(Tenant("hes-operator", "HES", "shared-system", push_intake="hes"),
             Principal("hes-operator", "service", "pusher", frozenset({"pusher"})))
RELATIONS = RelationIndex([Relation("meter", ORES, "ores", "owner"),
                           Relation("meter", FLUVIUS, "fluvius", "owner")])


def record(meter: str, quarter: int, value: float, **extra: Any) -> dict[str, Any]:
    at = NOW.replace(hour=0) - timedelta(days=1) + timedelta(minutes=15 * quarter)
    return {"meter": meter, "timestamp": at.isoformat(), "obis": "1-0:1.8.1",
            "value": value, "unit": "kWh", "quality": "01", **extra}


RECORDS = [record(ORES, 1, 1.5, operator="ores"), record(FLUVIUS, 1, 2),
           record(ORES, 2, 0.25, via=None), record("not a serial", 3, 1),
           record(FLUVIUS, 2, 3.0, operator="ores")]


def make_service(root: Path) -> tuple[PushService, SqliteOutbox]:
    """The HES's push service over an outbox and an audit log of its own in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    key, kid = load_or_create_audit_key(root)
    outbox = SqliteOutbox(root / "outbox.db", KEY)
    return PushService(outbox=outbox, relations=lambda: RELATIONS,
                       endpoints={"ores": "https://127.0.0.1:9/",
                                  "fluvius": "https://127.0.0.1:9/"},
                       client_tls=ssl.create_default_context(), metrics=GatewayMetrics(),
                       audit=ChainedAuditLog(root / "audit.log", key, kid),
                       clock=lambda: NOW), outbox


@pytest.fixture()
def service(tmp_path: Path) -> Iterator[PushService]:
    made, outbox = make_service(tmp_path)
    yield made
    outbox.close()


@pytest.fixture()
def general_path_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_service, "decode_readings", lambda raw: None)


def post(service: PushService, doc: dict[str, Any], **extra: Any) -> dict[str, Any]:
    status, answer, _ = service.intake(HES, json.dumps({**doc, **extra}).encode())
    assert status == 202
    return answer


def stored(service: PushService, tenant: str) -> list[Any]:
    (part,) = [p for p in service.outbox.parts() if p.tenant == tenant]
    return service.outbox.payload(part)


def test_a_typed_batch_never_reaches_the_general_router(service: PushService,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def general(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the general path")

    monkeypatch.setattr(_service, "route_batch", general)
    answer = post(service, {"batch_id": "B1", "records": RECORDS})
    assert (answer["received"], answer["queued"], answer["quarantined"]) == (5, 3, 2)
    assert answer["quarantine"] == [
        {"index": 3, "reason": "malformed-meter-id", "meter": None},
        {"index": 4, "reason": "owner-mismatch", "meter": FLUVIUS}]
    # D1: each owner its own records, the HES's routing hints removed.
    assert stored(service, "ores") == [
        {k: v for k, v in r.items() if k not in ("operator", "via")} for r in RECORDS[0:3:2]]
    assert stored(service, "fluvius") == [RECORDS[1]]


@pytest.mark.usefixtures("general_path_only")
def test_the_general_path_answers_and_stores_the_same(service: PushService) -> None:
    answer = post(service, {"batch_id": "B1", "records": RECORDS})
    assert (answer["received"], answer["queued"], answer["quarantined"]) == (5, 3, 2)
    assert [q["reason"] for q in answer["quarantine"]] == ["malformed-meter-id",
                                                           "owner-mismatch"]
    assert stored(service, "ores") == [
        {k: v for k, v in r.items() if k not in ("operator", "via")} for r in RECORDS[0:3:2]]
    assert stored(service, "fluvius") == [RECORDS[1]]


def test_a_repost_by_the_other_path_is_the_same_batch(service: PushService) -> None:
    first = post(service, {"batch_id": "B1", "records": RECORDS})
    assert {p["status"] for p in first["parts"]} == {"queued"}
    # "format": null sends the same content the general way; key order and
    # spacing are not content either.
    again = post(service, {"records": [dict(reversed(r.items())) for r in RECORDS],
                           "batch_id": "B1"}, format=None)
    assert {p["status"] for p in again["parts"]} == {"already-queued"}
    assert again["queued"] == first["queued"]


def test_other_content_under_the_same_id_is_refused_whichever_path(
        service: PushService) -> None:
    post(service, {"batch_id": "B1", "records": RECORDS}, format=None)  # the general path
    changed = [*RECORDS[:-1], record(FLUVIUS, 2, 3.5)]
    with pytest.raises(RequestRefused) as refused:
        post(service, {"batch_id": "B1", "records": changed})  # the fast path
    assert (refused.value.status, refused.value.reason) == (
        409, "batch-id-reused-with-other-content")


def test_an_unusable_batch_id_is_a_400_on_the_fast_path(service: PushService) -> None:
    with pytest.raises(RequestRefused) as refused:
        post(service, {"batch_id": "no spaces", "records": RECORDS})
    assert (refused.value.status, refused.value.reason) == (400, "bad-batch-id")
    assert service.outbox.parts() == []


def test_a_deeply_nested_batch_is_refused_by_the_nesting_check(service: PushService) -> None:
    """Only a body the fast path leaves to the general one can nest deeply:
    it meets the nesting check there (400, not a RecursionError's 500)."""
    with pytest.raises(RequestRefused) as refused:
        post(service, {"batch_id": "B1", "records": RECORDS,
                       "note": json.loads("[" * 200 + "]" * 200)})
    assert (refused.value.status, refused.value.reason) == (400, "body-too-deep")
