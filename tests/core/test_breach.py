"""Breach notices (D1, D12): a withheld answer names the records that were
not the caller's, and each owner the feed names for them is told how many,
never the requester, never a record or a resource id."""

from __future__ import annotations

import copy
import json
from datetime import UTC
from typing import Any

import pytest

from gateway.core.breach import OWNER_RELATIONS, BreachNotice, breach_notices, owners_of
from gateway.core.catalog import default_route_table
from gateway.core.check import ForeignRecord, check_response
from gateway.core.decide import RequestFacts
from gateway.core.model import Relation
from gateway.core.relations.index import RelationIndex

from .conftest import DAY, EAN_A, EAN_B, METER_MOVED, METER_ORES, METER_WATER, NOW, SWITCH, tenant

TABLE = default_route_table()


def verdict(caller_id: str, kind: str, path: str, body: Any, relations: RelationIndex,
            query: dict[str, str] | None = None) -> Any:
    found = TABLE.lookup("GET", path)
    assert found.match is not None
    return check_response(tenant(caller_id, kind), found.match.route,
                          RequestFacts(found.match.params, query or {}), relations,
                          copy.deepcopy(body), NOW)


def test_a_withheld_list_names_every_foreign_record_not_only_the_first(
        relations: RelationIndex) -> None:
    body = {"meters": [{"serial": METER_WATER}, {"serial": METER_ORES},
                       {"serial": METER_MOVED}]}
    v = verdict("ores", "dso", "/hes/meters", body, relations)
    assert not v.decision.allowed and v.decision.reason == "foreign-record"
    assert v.body is None
    assert [(f.kind, f.resource_id) for f in v.foreign] == [
        ("meter", METER_WATER), ("meter", METER_MOVED)]


def test_an_answer_that_passes_names_no_foreign_record(relations: RelationIndex) -> None:
    v = verdict("ores", "dso", "/hes/meters", {"meters": [{"serial": METER_ORES}]}, relations)
    assert v.decision.allowed and v.foreign == ()


def test_another_record_than_the_one_asked_for_is_foreign_when_not_the_callers(
        relations: RelationIndex) -> None:
    v = verdict("fluvius", "dso", f"/clearing/access-points/{EAN_B}", {"ean": EAN_A},
                relations)
    assert v.decision.reason == "record-not-requested"
    assert [(f.kind, f.resource_id) for f in v.foreign] == [("ean", EAN_A)]


def test_a_reading_is_checked_and_owned_at_its_own_time(relations: RelationIndex) -> None:
    """D5: a meter that changed owner: a reading from before the switch
    belongs to the former owner, who is the one told."""
    before = (SWITCH - DAY / 4).isoformat()
    after = (SWITCH + DAY / 4).isoformat()
    day = SWITCH.date().isoformat()
    body = {"meter": METER_MOVED, "readings": [
        {"meter": METER_MOVED, "timestamp": after, "value": 1},
        {"meter": METER_MOVED, "timestamp": before, "value": 2}]}
    v = verdict("sibelga", "dso", f"/hes/meters/{METER_MOVED}/readings", body, relations,
                {"date": day})
    assert not v.decision.allowed
    assert [f.at.isoformat() for f in v.foreign] == [before]
    counts, unowned = owners_of(v.foreign, relations, "sibelga")
    assert counts == {"fluvius": 1} and unowned == 0


def test_the_owner_is_told_not_the_requester(relations: RelationIndex) -> None:
    foreign = [ForeignRecord("meter", METER_WATER, NOW), ForeignRecord("meter", METER_WATER, NOW),
               ForeignRecord("ean", EAN_B, NOW)]
    notices, unowned = breach_notices(
        incident="inc-1", at=NOW, shared_system="hes", route="/hes/meters",
        requested_by="ores", reason="foreign-record", foreign=foreign, relations=relations)
    assert [(n.owner, n.records) for n in notices] == [("fluvius", 1), ("pidpa", 2)]
    assert all(n.requested_by == "ores" and n.incident == "inc-1" for n in notices)
    assert unowned == 0


def test_the_requester_is_never_told_even_when_the_feed_names_it_an_owner() -> None:
    """SECURITY: a requester told of records it was refused would learn
    they exist; the requester is taken out of the owners."""
    rel = RelationIndex([Relation("meter", "M1", "ores", "owner"),
                         Relation("meter", "M1", "pidpa", "owner")])
    counts, unowned = owners_of([ForeignRecord("meter", "M1", NOW)], rel, "ores")
    assert counts == {"pidpa": 1} and unowned == 0
    counts, unowned = owners_of([ForeignRecord("meter", "M1", NOW)],
                                RelationIndex([Relation("meter", "M1", "ores", "owner")]),
                                "ores")
    assert counts == {} and unowned == 1
    # ... and so in the notices themselves.
    notices, unowned = breach_notices(
        incident="inc-3", at=NOW, shared_system="hes", route="/hes/meters",
        requested_by="ores", reason="foreign-record",
        foreign=[ForeignRecord("meter", "M1", NOW)], relations=rel)
    assert [n.owner for n in notices] == ["pidpa"] and unowned == 0


def test_records_without_an_owner_are_counted_apart(relations: RelationIndex) -> None:
    counts, unowned = owners_of([ForeignRecord("meter", "NOBODY", NOW),
                                 ForeignRecord("unknown-kind", "X", NOW)], relations, "ores")
    assert counts == {} and unowned == 2


def test_the_owner_comes_from_the_owning_relation_only(relations: RelationIndex) -> None:
    """An access point's supplier or mandate holder is not its owner: the
    grid operator is."""
    counts, _ = owners_of([ForeignRecord("ean", EAN_A, NOW)], relations, "kempen-power")
    assert counts == {"ores": 1}
    assert set(OWNER_RELATIONS) >= {r.records[0].kind for r in TABLE.routes}


def test_the_document_names_no_record_and_no_resource_id(relations: RelationIndex) -> None:
    notices, _ = breach_notices(
        incident="inc-2", at=NOW, shared_system="hes", route="/hes/meters/{serial}",
        requested_by="ores", reason="record-not-requested",
        foreign=[ForeignRecord("meter", METER_WATER, NOW)], relations=relations)
    (notice,) = notices
    doc = notice.document("mailto:csirt@pidpa.example")
    assert doc == {
        "type": "breach-notification", "incident": "inc-2", "time": NOW.isoformat(),
        "owner": "pidpa", "shared_system": "hes", "route": "/hes/meters/{serial}",
        "records": 1, "requested_by": "ores", "reason": "record-not-requested",
        "outcome": "withheld", "security_contact": "mailto:csirt@pidpa.example"}
    assert METER_WATER not in json.dumps(doc)
    assert notice.key == "inc-2/pidpa"


def test_the_time_is_utc_whatever_the_hosts_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The notice's time is UTC on a host set to another zone (Brussels)."""
    import time

    monkeypatch.setenv("TZ", "Europe/Brussels")
    time.tzset()
    try:
        notice = BreachNotice("inc-4", "pidpa", NOW, "hes", "/hes/meters", 1, "ores",
                              "foreign-record")
        assert notice.document(None)["time"] == NOW.astimezone(UTC).isoformat()
        assert notice.document(None)["time"].endswith("+00:00")
    finally:
        monkeypatch.undo()
        time.tzset()
