"""check_response(): every record is the caller's, or nothing goes out (D1)."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from typing import Any

import pytest

from gateway.core.catalog import default_route_table
from gateway.core.check import check_response
from gateway.core.decide import RequestFacts
from gateway.core.fields import DROP_INITIATOR
from gateway.core.model import Relation
from gateway.core.relations.index import RelationIndex

from .conftest import (
    DAY,
    EAN_A,
    EAN_B,
    EAN_D3,
    METER_MOVED,
    METER_ORES,
    METER_WATER,
    NOW,
    SWITCH,
    tenant,
)

TABLE = default_route_table()


def check(caller_id: str, kind: str, method: str, path: str, body: Any,
          relations: RelationIndex, query: dict[str, str] | None = None):
    found = TABLE.lookup(method, path)
    assert found.match is not None
    facts = RequestFacts(found.match.params, query or {})
    return check_response(tenant(caller_id, kind), found.match.route, facts, relations,
                          copy.deepcopy(body), NOW)


def test_own_list_passes_unchanged(relations: RelationIndex) -> None:
    body = {"meters": [{"serial": METER_ORES}]}
    v = check("ores", "dso", "GET", "/hes/meters", body, relations)
    assert v.decision.allowed and not v.changed and v.body == body


def test_one_foreign_record_withholds_the_whole_list(relations: RelationIndex) -> None:
    body = {"meters": [{"serial": METER_ORES}, {"serial": METER_WATER}]}
    v = check("ores", "dso", "GET", "/hes/meters", body, relations)
    assert not v.decision.allowed
    assert v.decision.status == 502 and v.decision.reason == "foreign-record"
    assert v.body is None


def test_detail_must_be_the_requested_record(relations: RelationIndex) -> None:
    v = check("ores", "dso", "GET", f"/hes/meters/{METER_ORES}", {"serial": "1SAG0000000077"},
              relations)
    assert v.decision.reason == "record-not-requested"


def test_malformed_upstream_answers_fail_closed(relations: RelationIndex) -> None:
    for body in ({"meters": "x"}, {"nope": []}, [1, 2], {"meters": [{"serial": 5}]},
                 {"meters": [["a"]]}):
        v = check("ores", "dso", "GET", "/hes/meters", body, relations)
        assert not v.decision.allowed and v.decision.reason == "response-malformed"


def test_water_reading_through_electricity_meter_is_caught(relations: RelationIndex) -> None:
    # D5: a water reading travelling through ORES's electricity meter must not
    # be handed to ORES.
    day = (NOW - timedelta(days=3)).date().isoformat()
    body = {"readings": [
        {"meter": METER_ORES, "timestamp": f"{day}T00:00:00+00:00"},
        {"meter": METER_WATER, "timestamp": f"{day}T00:00:00+00:00"},
    ]}
    v = check("ores", "dso", "GET", f"/hes/meters/{METER_ORES}/readings", body, relations,
              {"date": day})
    assert v.decision.reason == "foreign-record"


def test_readings_after_owner_change_are_not_the_old_owners(relations: RelationIndex) -> None:
    day = SWITCH.date().isoformat()
    morning = {"meter": METER_MOVED, "timestamp": f"{day}T06:00:00+00:00"}
    evening = {"meter": METER_MOVED, "timestamp": f"{day}T18:00:00+00:00"}
    path = f"/hes/meters/{METER_MOVED}/readings"
    assert check("fluvius", "dso", "GET", path, {"readings": [morning]}, relations,
                 {"date": day}).decision.allowed
    v = check("fluvius", "dso", "GET", path, {"readings": [morning, evening]}, relations,
              {"date": day})
    assert v.decision.reason == "foreign-record"
    assert check("sibelga", "dso", "GET", path, {"readings": [evening]}, relations,
                 {"date": day}).decision.allowed


def test_record_outside_requested_window(relations: RelationIndex) -> None:
    q = {"from": (NOW - timedelta(days=30)).date().isoformat(),
         "to": (NOW - timedelta(days=1)).date().isoformat()}
    early = (NOW - timedelta(days=200)).date().isoformat()
    body = {"readings": [{"ean": EAN_A, "date": early}]}
    v = check("lumen-energie", "supplier", "GET", f"/clearing/access-points/{EAN_A}/consumption",
              body, relations, q)
    assert v.decision.reason == "record-outside-window"


def _access_point(ean: str, contracts: list[dict[str, Any]], restricted: Any = None
                  ) -> dict[str, Any]:
    return {"ean": ean, "contracts": contracts, "restricted": restricted}


# D3: the access register's feed says lumen-energie started the drop on EAN_D3,
# from 20 days ago until 3 days from now (its contract runs 7 days more).
DROP_FROM, DROP_TO = NOW - 20 * DAY, NOW + 3 * DAY


def _with_drop(relations: RelationIndex) -> RelationIndex:
    return RelationIndex([*relations, Relation("ean", EAN_D3, "lumen-energie", DROP_INITIATOR,
                                               DROP_FROM, DROP_TO)])


def _d3_record(named_initiator: str | None) -> dict[str, Any]:
    contracts = [{"supplier": "lumen-energie", "valid_from": None, "valid_to": None},
                 {"supplier": "kempen-power", "valid_from": None, "valid_to": None}]
    block: dict[str, Any] = {"drop_in_progress": True}
    if named_initiator is not None:
        block["initiator"] = named_initiator
    return _access_point(EAN_D3, contracts, block)


def test_d3_new_supplier_does_not_learn_of_the_drop(relations: RelationIndex) -> None:
    relations = _with_drop(relations)
    record = _d3_record("lumen-energie")
    path = f"/clearing/access-points/{EAN_D3}"
    new = check("kempen-power", "supplier", "GET", path, record, relations)
    assert new.decision.allowed and new.changed
    assert "restricted" not in new.body
    assert "drop" not in repr(new.body)
    initiator = check("lumen-energie", "supplier", "GET", path, record, relations)
    assert initiator.body["restricted"]["drop_in_progress"] is True
    grid = check("ores", "dso", "GET", path, record, relations)
    assert grid.body["restricted"]["drop_in_progress"] is True


def test_d3_the_answer_never_names_its_own_initiator(relations: RelationIndex) -> None:
    """The clearing answer claims kempen-power started the drop; the feed says
    lumen-energie. The feed decides (DESIGN.md §4: an upstream's answer does
    not vouch for itself)."""
    relations = _with_drop(relations)
    path = f"/clearing/access-points/{EAN_D3}"
    for named in ("kempen-power", None, ["kempen-power"], {"tenant": "kempen-power"}):
        lying = _d3_record(None) | {"restricted": {"drop_in_progress": True,
                                                   "initiator": named}}
        new = check("kempen-power", "supplier", "GET", path, lying, relations)
        assert new.decision.allowed and "restricted" not in new.body, named
        feed = check("lumen-energie", "supplier", "GET", path, lying, relations)
        assert feed.body["restricted"]["drop_in_progress"] is True, named


def test_d3_without_the_feed_relation_only_the_grid_operator_sees(relations: RelationIndex
                                                                  ) -> None:
    path = f"/clearing/access-points/{EAN_D3}"
    for caller in ("lumen-energie", "kempen-power"):
        v = check(caller, "supplier", "GET", path, _d3_record(caller), relations)
        assert v.decision.allowed and "restricted" not in v.body, caller
    assert "restricted" in check("ores", "dso", "GET", path, _d3_record("lumen-energie"),
                                 relations).body


@pytest.mark.parametrize("at,sees", [
    (DROP_FROM - timedelta(microseconds=1), False),
    (DROP_FROM, True),
    (DROP_TO - timedelta(microseconds=1), True),
    (DROP_TO, False),  # lumen-energie still supplies (4 more days), the drop is over
])
def test_d3_initiator_only_within_the_relation_window(relations: RelationIndex,
                                                      at: datetime, sees: bool) -> None:
    found = TABLE.lookup("GET", f"/clearing/access-points/{EAN_D3}")
    assert found.match is not None
    v = check_response(tenant("lumen-energie", "supplier"), found.match.route,
                       RequestFacts(found.match.params, {}), _with_drop(relations),
                       _d3_record("lumen-energie"), at)
    assert v.decision.allowed
    assert ("restricted" in v.body) is sees


def test_d3_list_route_strips_the_block_for_the_new_supplier(relations: RelationIndex) -> None:
    relations = _with_drop(relations)
    body = {"access_points": [_d3_record("kempen-power")]}
    new = check("kempen-power", "supplier", "GET", "/clearing/access-points", body, relations)
    assert new.decision.allowed and new.changed
    assert "restricted" not in new.body["access_points"][0]
    own = check("lumen-energie", "supplier", "GET", "/clearing/access-points", body, relations)
    assert own.body["access_points"][0]["restricted"]["drop_in_progress"] is True


def test_d2_supplier_sees_only_its_own_contracts(relations: RelationIndex) -> None:
    contracts = [{"supplier": "mosa-energie", "valid_from": "2024-01-01", "valid_to": "2026-03-07"},
                 {"supplier": "lumen-energie", "valid_from": "2026-03-07", "valid_to": None}]
    v = check("lumen-energie", "supplier", "GET", f"/clearing/access-points/{EAN_A}",
              _access_point(EAN_A, contracts), relations)
    assert [c["supplier"] for c in v.body["contracts"]] == ["lumen-energie"]
    dso = check("ores", "dso", "GET", f"/clearing/access-points/{EAN_A}",
                _access_point(EAN_A, contracts), relations)
    assert len(dso.body["contracts"]) == 2
    welfare = check("cpas-namur", "social-welfare", "GET", f"/clearing/access-points/{EAN_A}",
                    _access_point(EAN_A, contracts), relations)
    assert [c["supplier"] for c in welfare.body["contracts"]] == ["lumen-energie"]


def test_supplier_list_with_foreign_access_point_is_withheld(relations: RelationIndex) -> None:
    body = {"access_points": [_access_point(EAN_A, []), _access_point(EAN_B, [])]}
    v = check("lumen-energie", "supplier", "GET", "/clearing/access-points", body, relations)
    assert v.decision.reason == "foreign-record"


def _cmh_request() -> dict[str, Any]:
    return {"id": "CMH1", "coordinator": "ores", "status": "open",
            "site": {"street": "Chemin 1", "postal_code": "5000", "city": "Namur",
                     "requested_date": "2026-07-01", "household": {"name": "H"},
                     "eans": [EAN_A], "cadastral_parcel": "92001A"},
            "connections": [
                {"id": "CMH1-1", "operator": "ores", "utility": "electricity", "ean": EAN_A},
                {"id": "CMH1-2", "operator": "proximus", "utility": "telecom"},
                {"id": "CMH1-3", "operator": "swde", "utility": "water"}]}


def test_cmh_operator_sees_only_its_connection_and_minimum_site(relations: RelationIndex
                                                                 ) -> None:
    v = check("proximus", "telecom", "GET", "/cmh/requests/CMH1", _cmh_request(), relations)
    assert v.decision.allowed
    assert [c["id"] for c in v.body["connections"]] == ["CMH1-2"]
    assert set(v.body["site"]) == {"street", "postal_code", "city", "requested_date",
                                   "household"}
    assert EAN_A not in repr(v.body)  # telecom never sees an energy EAN
    assert v.changed
    # The request's own shared members stay; anything else top-level goes.
    request = {**_cmh_request(), "created": "2026-06-01", "note": "internal"}
    v = check("proximus", "telecom", "GET", "/cmh/requests/CMH1", request, relations)
    assert set(v.body) == {"id", "coordinator", "status", "created", "site", "connections"}
    assert (v.body["id"], v.body["coordinator"], v.body["status"], v.body["created"]) == (
        "CMH1", "ores", "open", "2026-06-01")


def test_cmh_coordinator_sees_everything(relations: RelationIndex) -> None:
    v = check("ores", "dso", "GET", "/cmh/requests/CMH1", _cmh_request(), relations)
    assert v.decision.allowed and not v.changed and len(v.body["connections"]) == 3


def test_cmh_ean_smuggled_in_a_connection_is_withheld_for_telecom(relations: RelationIndex
                                                                   ) -> None:
    req = _cmh_request()
    req["connections"][1]["note"] = f"same address as {EAN_A}"
    v = check("proximus", "telecom", "GET", "/cmh/requests/CMH1", req, relations)
    assert not v.decision.allowed and v.decision.reason == "field-rule-violation"


def test_cmh_list_with_request_of_others_is_withheld(relations: RelationIndex) -> None:
    other = _cmh_request() | {"id": "CMH9"}
    v = check("proximus", "telecom", "GET", "/cmh/requests",
              {"requests": [_cmh_request(), other]}, relations)
    assert v.decision.reason == "foreign-record"


# D10: why an answer was withheld, and which record, go to the audit event
# (``resources``) and the ``reason`` metric label: each case names both.
def _day(days_ago: int) -> str:
    return (NOW - timedelta(days=days_ago)).date().isoformat()


def _withheld_cases() -> list[tuple[str, str, str, str, Any, dict[str, str], str, tuple[str, ...]]]:
    readings = f"/hes/meters/{METER_ORES}/readings"
    consumption = f"/clearing/access-points/{EAN_A}/consumption"
    window = {"from": _day(30), "to": _day(1)}
    return [
        # (caller, kind, method, path, body, query, reason, resources)
        ("ores", "dso", "GET", "/hes/meters", {"meters": [{"serial": METER_ORES},
                                                          {"serial": METER_WATER}]},
         {}, "foreign-record", (METER_WATER,)),
        ("ores", "dso", "GET", f"/hes/meters/{METER_ORES}", {"serial": "1SAG0000000077"},
         {}, "record-not-requested", ("1SAG0000000077",)),
        ("ores", "dso", "GET", "/hes/meters", {"meters": [{"serial": 5}]},
         {}, "response-malformed", ()),
        ("ores", "dso", "GET", readings, {"readings": [{"meter": METER_ORES}]},
         {"date": _day(3)}, "response-malformed", (METER_ORES,)),  # no timestamp
        ("ores", "dso", "GET", readings, {"readings": [{"meter": METER_ORES,
                                                        "timestamp": "yesterday"}]},
         {"date": _day(3)}, "response-malformed", (METER_ORES,)),
        ("lumen-energie", "supplier", "GET", consumption,
         {"readings": [{"ean": EAN_A}]}, window, "response-malformed", (EAN_A,)),  # no date
        ("lumen-energie", "supplier", "GET", consumption,
         {"readings": [{"ean": EAN_A, "date": _day(200)}]}, window,
         "record-outside-window", (EAN_A,)),
        ("lumen-energie", "supplier", "GET", consumption, {"readings": []},
         {"from": _day(1), "to": _day(30)}, "window-invalid", ()),  # from after to
        ("engie-it", "it-provider", "GET", "/hes/meters", {"meters": []},
         {}, "tenant-kind-not-permitted", ()),  # decide() refuses it first
    ]


@pytest.mark.parametrize("case", _withheld_cases(), ids=lambda c: f"{c[6]}-{c[3]}")
def test_every_withheld_answer_names_its_reason_and_record(
        relations: RelationIndex, case: tuple[Any, ...]) -> None:
    caller, kind, method, path, body, query, reason, resources = case
    v = check(caller, kind, method, path, body, relations, query)
    assert not v.decision.allowed and v.body is None
    assert (v.decision.status, v.decision.reason, v.decision.resources) == (
        502, reason, resources)


def test_an_allowed_answer_names_every_record_it_checked(relations: RelationIndex) -> None:
    v = check("ores", "dso", "GET", "/hes/meters", {"meters": [{"serial": METER_ORES}]},
              relations)
    assert (v.decision.reason, v.decision.resources) == ("checked", (METER_ORES,))


def test_d2_a_supplier_never_sees_another_suppliers_running_contract(
        relations: RelationIndex) -> None:
    """D2: 'it never sees customers active with another supplier': the other
    supplier's contract that runs now is removed, not only an ended one."""
    contracts = [{"supplier": "mosa-energie", "valid_from": None, "valid_to": None},
                 {"supplier": "lumen-energie", "valid_from": None, "valid_to": None}]
    v = check("lumen-energie", "supplier", "GET", f"/clearing/access-points/{EAN_A}",
              _access_point(EAN_A, contracts), relations)
    assert v.decision.allowed and v.changed
    assert [c["supplier"] for c in v.body["contracts"]] == ["lumen-energie"]


def test_d4_a_mandate_holder_sees_exactly_the_contracts_running_now(
        relations: RelationIndex) -> None:
    """A welfare centre's view of the contracts is 'now': one that starts at
    this instant is shown, one that ends at this instant or starts later is
    not (the validity windows are [from, to))."""
    now, later, before = NOW.isoformat(), (NOW + DAY).isoformat(), (NOW - DAY).isoformat()
    contracts = [
        {"supplier": "starts-now", "valid_from": now, "valid_to": None},
        {"supplier": "ends-now", "valid_from": None, "valid_to": now},
        {"supplier": "starts-later", "valid_from": later, "valid_to": None},
        {"supplier": "ended", "valid_from": None, "valid_to": before},
        {"supplier": "running", "valid_from": before, "valid_to": later},
    ]
    v = check("cpas-namur", "social-welfare", "GET", f"/clearing/access-points/{EAN_A}",
              _access_point(EAN_A, contracts), relations)
    assert v.decision.allowed and v.changed
    assert [c["supplier"] for c in v.body["contracts"]] == ["starts-now", "running"]
    # Nothing to remove: the answer is passed on as it came.
    running = [contracts[-1]]
    v = check("cpas-namur", "social-welfare", "GET", f"/clearing/access-points/{EAN_A}",
              _access_point(EAN_A, running), relations)
    assert v.decision.allowed and not v.changed and v.body["contracts"] == running


def test_d2_d3_field_rules_apply_to_every_record_of_a_list(relations: RelationIndex) -> None:
    """A record without contracts or without a restricted block does not end
    the field rules: the next record of the list is filtered too."""
    bare = {"ean": EAN_A}
    full = _access_point(EAN_A, [
        {"supplier": "mosa-energie", "valid_from": None, "valid_to": None},
        {"supplier": "lumen-energie", "valid_from": None, "valid_to": None}],
        {"drop_in_progress": True})
    v = check("lumen-energie", "supplier", "GET", "/clearing/access-points",
              {"access_points": [bare, full]}, relations)
    assert v.decision.allowed and v.changed
    first, second = v.body["access_points"]
    assert first == bare
    assert [c["supplier"] for c in second["contracts"]] == ["lumen-energie"]  # D2
    assert "restricted" not in second  # D3: lumen did not start a drop on EAN_A


def test_a_coordination_that_ended_shows_only_the_own_connection() -> None:
    """D1 in time: ORES coordinated CMH9 until yesterday; now it is only one
    of the operators and sees its own connection, not the others'."""
    rels = RelationIndex([
        Relation("cmh-request", "CMH9", "ores", "coordinator", NOW - 30 * DAY, NOW - DAY),
        Relation("cmh-request", "CMH9", "ores", "participant"),
        Relation("cmh-request", "CMH9", "proximus", "participant"),
    ])
    request = {**_cmh_request(), "id": "CMH9"}
    for c in request["connections"]:
        c["id"] = c["id"].replace("CMH1", "CMH9")
    v = check("ores", "dso", "GET", "/cmh/requests/CMH9", request, rels)
    assert v.decision.allowed and v.changed
    assert [c["operator"] for c in v.body["connections"]] == ["ores"]


def test_d3_read_at_this_instant_for_everyone_entitled() -> None:
    """D3 in time: entitlement is read now, for the grid operator (whose
    relation here is bounded) as for the initiator (whose drop ended)."""
    rels = RelationIndex([
        Relation("ean", EAN_D3, "ores", "grid-operator", NOW - 300 * DAY, NOW + 300 * DAY),
        Relation("ean", EAN_D3, "lumen-energie", "supplier"),
        Relation("ean", EAN_D3, "lumen-energie", DROP_INITIATOR, NOW - 30 * DAY, NOW - DAY),
    ])
    lumen = check("lumen-energie", "supplier", "GET", f"/clearing/access-points/{EAN_D3}",
                  _d3_record("lumen-energie"), rels)
    assert lumen.decision.allowed and "restricted" not in lumen.body
    ores = check("ores", "dso", "GET", f"/clearing/access-points/{EAN_D3}",
                 _d3_record(None), rels)
    assert ores.decision.allowed and ores.body["restricted"] == {"drop_in_progress": True}


def test_cmh_removing_only_connections_still_marks_the_answer_changed(
        relations: RelationIndex) -> None:
    """The gateway forwards the upstream's own bytes only when nothing was
    removed: an answer whose only change is the other operators' connections
    must be marked changed, or they would reach the operator after all."""
    request = {"id": "CMH1", "coordinator": "ores", "status": "open",
               "site": {"city": "Namur"},
               "connections": [{"id": "CMH1-2", "operator": "proximus"},
                               {"id": "CMH1-3", "operator": "swde"}]}
    v = check("proximus", "telecom", "GET", "/cmh/requests/CMH1", request, relations)
    assert v.decision.allowed and v.changed
    assert [c["operator"] for c in v.body["connections"]] == ["proximus"]


def test_field_rules_judge_each_record_of_a_list_on_its_own() -> None:
    """Being entitled on one record (coordinator, drop initiator) says nothing
    of the next one in the same list."""
    rels = RelationIndex([
        Relation("cmh-request", "CMH1", "ores", "coordinator"),
        Relation("cmh-request", "CMH1", "ores", "participant"),
        Relation("cmh-request", "CMH9", "ores", "participant"),
        Relation("ean", EAN_D3, "lumen-energie", "supplier"),
        Relation("ean", EAN_D3, "lumen-energie", DROP_INITIATOR),
        Relation("ean", EAN_A, "lumen-energie", "supplier"),
    ])
    nine = {"id": "CMH9", "coordinator": "resa", "status": "open", "site": {"city": "Liege"},
            "connections": [{"id": "CMH9-1", "operator": "resa"},
                            {"id": "CMH9-2", "operator": "ores"}]}
    v = check("ores", "dso", "GET", "/cmh/requests", {"requests": [_cmh_request(), nine]}, rels)
    assert v.decision.allowed
    assert len(v.body["requests"][0]["connections"]) == 3  # coordinator of CMH1
    assert [c["operator"] for c in v.body["requests"][1]["connections"]] == ["ores"]
    block = {"drop_in_progress": True}
    aps = [_access_point(EAN_D3, [], dict(block)), _access_point(EAN_A, [], dict(block))]
    v = check("lumen-energie", "supplier", "GET", "/clearing/access-points",
              {"access_points": aps}, rels)
    assert v.decision.allowed
    assert v.body["access_points"][0]["restricted"] == block  # its own drop
    assert "restricted" not in v.body["access_points"][1]  # D3: none on EAN_A
