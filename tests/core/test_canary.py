"""Isolation canaries, the pure part (D1): which resources the feed marks,
what a canary principal may read, and what each probe's answer means."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest

from gateway.core.breach import BreachNotice
from gateway.core.canary import (
    BREACH,
    CANARY_ROLE,
    ERROR,
    OK,
    OWNER_UNREACHABLE,
    PROBE_ROUTES,
    WITHHELD,
    Canary,
    canaries,
    canary_principal,
    decide_canary,
    probe_result,
)
from gateway.core.catalog import default_route_table
from gateway.core.decide import RequestFacts, decide
from gateway.core.model import Caller, Relation
from gateway.core.relations.index import RelationIndex

from .conftest import METER_ORES, NOW, tenant

CANARY_ORES = "1CAN0000000001"
CANARY_FLUVIUS = "1CAN0000000002"
TICKET_CANARY = "CANARY-INC-ores"
TABLE = default_route_table()
ISOLATION = json.dumps({"type": "urn:shared-grid-gateway:problem:isolation-violation",
                        "status": 502}).encode()


def feed() -> list[Relation]:
    return [
        Relation("meter", METER_ORES, "ores", "owner"),
        Relation("meter", CANARY_ORES, "ores", "owner"),
        Relation("meter", CANARY_ORES, "ores", "canary"),
        Relation("meter", CANARY_FLUVIUS, "fluvius", "owner"),
        Relation("meter", CANARY_FLUVIUS, "fluvius", "canary"),
        Relation("ticket", TICKET_CANARY, "ores", "owner"),
        Relation("ticket", TICKET_CANARY, "ores", "canary"),
        # A kind the prober has no route for: not a canary it can probe.
        Relation("asset", "AST-CANARY", "ores", "canary"),
    ]


@pytest.fixture()
def relations() -> RelationIndex:
    return RelationIndex(feed())


def as_canary(tenant_id: str, kind: str) -> Caller:
    caller = tenant(tenant_id, kind)
    return replace(caller, principal=canary_principal(tenant_id))


def ask(caller: Caller, method: str, path: str, relations: RelationIndex):
    found = TABLE.lookup(method, path)
    assert found.match is not None
    return decide_canary(caller, found.match.route, RequestFacts(found.match.params, {}),
                         relations, NOW)


def test_the_feed_marks_canaries_by_a_canary_tuple() -> None:
    assert canaries(feed()) == (
        Canary("meter", CANARY_ORES, "ores"), Canary("meter", CANARY_FLUVIUS, "fluvius"),
        Canary("ticket", TICKET_CANARY, "ores"))
    # An owner relation alone marks nothing.
    assert canaries([Relation("meter", METER_ORES, "ores", "owner")]) == ()


def test_the_canary_principal_has_the_canary_role_only() -> None:
    p = canary_principal("ores")
    assert (p.tenant, p.kind, p.name, p.roles) == ("ores", "service", "canary",
                                                   frozenset({CANARY_ROLE}))


def test_an_owner_reads_its_canary(relations: RelationIndex) -> None:
    d = ask(as_canary("ores", "dso"), "GET", f"/hes/meters/{CANARY_ORES}", relations)
    assert d.allowed and d.reason == "owner" and d.resources == (CANARY_ORES,)
    assert ask(as_canary("ores", "dso"), "GET", f"/itsm/tickets/{TICKET_CANARY}",
               relations).allowed


def test_a_canary_principal_never_reads_a_real_record(relations: RelationIndex) -> None:
    """D1: its own tenant's real meter, which the tenant's reader may read."""
    d = ask(as_canary("ores", "dso"), "GET", f"/hes/meters/{METER_ORES}", relations)
    assert not d.allowed and d.reason == "canary-principal-not-a-canary" and d.status == 403
    assert decide(tenant("ores", "dso"), TABLE.lookup("GET", f"/hes/meters/{METER_ORES}")
                  .match.route, RequestFacts({"serial": METER_ORES}, {}),  # type: ignore[union-attr]
                  relations, NOW).allowed


def test_another_tenants_canary_is_refused(relations: RelationIndex) -> None:
    d = ask(as_canary("fluvius", "dso"), "GET", f"/hes/meters/{CANARY_ORES}", relations)
    assert not d.allowed and d.reason == "no-relation"
    d = ask(as_canary("proximus", "telecom"), "GET", f"/hes/meters/{CANARY_ORES}", relations)
    assert not d.allowed  # no grant, not a consortium member


def test_a_canary_principal_never_lists_nor_writes(relations: RelationIndex) -> None:
    assert ask(as_canary("ores", "dso"), "GET", "/hes/meters", relations).reason \
        == "canary-principal-list"
    d = ask(as_canary("ores", "dso"), "POST", f"/hes/meters/{CANARY_ORES}/operations",
            relations)
    assert not d.allowed and d.reason == "canary-principal-list"


def test_decide_itself_refuses_the_canary_role(relations: RelationIndex) -> None:
    """Without the pipeline's dispatch, a canary principal reads nothing."""
    caller = as_canary("ores", "dso")
    found = TABLE.lookup("GET", f"/hes/meters/{CANARY_ORES}").match
    assert found is not None
    d = decide(caller, found.route, RequestFacts(found.params, {}), relations, NOW)
    assert not d.allowed and d.reason == "missing-role"


def test_the_mark_and_the_ownership_are_read_at_the_request_instant() -> None:
    """A canary the feed retired, or whose owner's relation ended, is read as
    the feed says at the request's instant, not as it ever was (D1)."""
    hour = timedelta(hours=1)
    retired = RelationIndex([
        Relation("meter", CANARY_ORES, "ores", "owner"),
        Relation("meter", CANARY_ORES, "ores", "canary", valid_to=NOW - hour)])
    assert ask(as_canary("ores", "dso"), "GET", f"/hes/meters/{CANARY_ORES}",
               retired).reason == "canary-principal-not-a-canary"
    moved = RelationIndex([
        Relation("meter", CANARY_ORES, "ores", "owner", valid_to=NOW - hour),
        Relation("meter", CANARY_ORES, "fluvius", "owner", valid_from=NOW - hour),
        Relation("meter", CANARY_ORES, "ores", "canary")])
    assert not ask(as_canary("ores", "dso"), "GET", f"/hes/meters/{CANARY_ORES}",
                   moved).allowed
    assert ask(as_canary("fluvius", "dso"), "GET", f"/hes/meters/{CANARY_ORES}",
               moved).allowed


def test_a_mark_held_by_another_tenant_still_needs_the_ordinary_relation() -> None:
    """The canary tuple opens nothing by itself: ownership is decided as usual."""
    rel = RelationIndex([Relation("meter", CANARY_ORES, "ores", "owner"),
                         Relation("meter", CANARY_ORES, "fluvius", "canary")])
    assert not ask(as_canary("fluvius", "dso"), "GET", f"/hes/meters/{CANARY_ORES}",
                   rel).allowed
    assert ask(as_canary("ores", "dso"), "GET", f"/hes/meters/{CANARY_ORES}", rel).allowed


# --- what an answer means ------------------------------------------------------

CANARY = Canary("meter", CANARY_ORES, "ores")
SERVED = json.dumps({"serial": CANARY_ORES, "utility": "electricity"}).encode()
OTHER = json.dumps({"serial": METER_ORES}).encode()


@pytest.mark.parametrize("prober,status,body,result", [
    ("ores", 200, SERVED, OK),
    ("ores", 200, OTHER, OWNER_UNREACHABLE),  # another record is not its canary
    ("ores", 403, b"{}", OWNER_UNREACHABLE),
    ("ores", 404, b"{}", OWNER_UNREACHABLE),
    ("ores", 502, ISOLATION, WITHHELD),
    ("ores", 502, b'{"type": "urn:shared-grid-gateway:problem:upstream-error"}',
     OWNER_UNREACHABLE),
    ("ores", None, b"", ERROR),
    ("fluvius", 403, b"{}", OK),
    ("fluvius", 404, b"{}", OK),
    ("fluvius", 200, SERVED, BREACH),
    ("fluvius", 201, SERVED, BREACH),
    ("fluvius", 300, SERVED, OK),
    ("ores", 300, SERVED, OWNER_UNREACHABLE),
    ("fluvius", 200, OTHER, OK),
    ("fluvius", 200, b"not json " + CANARY_ORES.encode(), BREACH),  # any trace counts
    ("fluvius", 502, ISOLATION, WITHHELD),
    ("fluvius", 502, b"not json", OK),
    ("fluvius", None, b"", ERROR),
])
def test_probe_results(prober: str, status: int | None, body: bytes, result: str) -> None:
    assert probe_result(CANARY, prober, status, body) == result


def test_a_list_body_is_no_served_canary() -> None:
    body = json.dumps([{"serial": CANARY_ORES}]).encode()
    assert probe_result(CANARY, "fluvius", 200, body) == OK


def test_every_probe_route_is_a_route_of_the_catalogue() -> None:
    for kind, (template, _) in PROBE_ROUTES.items():
        canary = Canary(kind, "X1", "ores")
        found = TABLE.lookup("GET", canary.path).match
        assert found is not None and found.route.template == template
        assert found.route.resource is not None and found.route.resource.kind == kind
        assert canary.upstream == found.route.upstream


def test_a_served_canary_notice_says_served() -> None:
    notice = BreachNotice("I-1", "ores", NOW, "hes", "/hes/meters/{serial}", 1, "fluvius",
                          "canary-breach", outcome="served")
    assert notice.document(None)["outcome"] == "served"
    withheld = BreachNotice("I-1", "ores", NOW, "hes", "/hes/meters/{serial}", 1, "fluvius",
                            "response-foreign-record")
    assert withheld.document(None)["outcome"] == "withheld"
