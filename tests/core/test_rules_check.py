"""Guards of the response check that no other test could tell apart from
their absence: D3 on the clearing list route, the IT provider's answers
checked record by record (D1, D9), Connect My Home's top-level members kept
from every operator but the coordinator."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.core.catalog import default_route_table
from gateway.core.check import check_response
from gateway.core.decide import RequestFacts
from gateway.core.model import Relation
from gateway.core.relations.index import RelationIndex

from .conftest import DAY, EAN_A, EAN_D3, NOW, build_relations, tenant

TABLE = default_route_table()


def check(who: str, kind: str, path: str, body: Any, relations: RelationIndex) -> Any:
    found = TABLE.lookup("GET", path)
    assert found.match is not None, path
    return check_response(tenant(who, kind), found.match.route,
                          RequestFacts(found.match.params, {}), relations,
                          copy.deepcopy(body), NOW)


# --- D3 on every route that answers access points ---------------------------

def _world() -> RelationIndex:
    """EAN_D3: lumen-energie started a drop (the feed says so); kempen-power
    switches in; the welfare centre holds a mandate on it too."""
    return RelationIndex([
        *build_relations(),
        Relation("ean", EAN_D3, "lumen-energie", "drop-initiator", NOW - 20 * DAY, NOW + 3 * DAY),
        Relation("ean", EAN_D3, "cpas-namur", "mandate"),
    ])


def _access_point() -> dict[str, Any]:
    return {"ean": EAN_D3, "contracts": [],
            "restricted": {"drop_in_progress": True, "prepayment_active": True,
                           "initiator": "lumen-energie"}}


ACCESS_POINT_ROUTES = [
    ("/clearing/access-points", {"access_points": [_access_point()]}),
    (f"/clearing/access-points/{EAN_D3}", _access_point()),
]


def _records(body: Any) -> list[dict[str, Any]]:
    return list(body["access_points"]) if "access_points" in body else [body]


@pytest.mark.parametrize("path,body", ACCESS_POINT_ROUTES, ids=["list", "detail"])
@pytest.mark.parametrize("who,kind", [("kempen-power", "supplier"),
                                      ("cpas-namur", "social-welfare")])
def test_d3_nobody_but_initiator_and_grid_operator_sees_the_drop(
        path: str, body: Any, who: str, kind: str) -> None:
    v = check(who, kind, path, body, _world())
    assert v.decision.allowed and v.changed
    for rec in _records(v.body):
        assert "restricted" not in rec
    assert "drop" not in repr(v.body) and "prepayment" not in repr(v.body)


@pytest.mark.parametrize("path,body", ACCESS_POINT_ROUTES, ids=["list", "detail"])
@pytest.mark.parametrize("who,kind", [("lumen-energie", "supplier"), ("ores", "dso")])
def test_d3_initiator_and_grid_operator_keep_the_block(path: str, body: Any, who: str,
                                                       kind: str) -> None:
    v = check(who, kind, path, body, _world())
    assert v.decision.allowed
    assert all(rec["restricted"]["drop_in_progress"] is True for rec in _records(v.body))


def test_every_clearing_route_answering_access_points_applies_d3() -> None:
    """A route added later that lists access points gets the rule too."""
    for route in TABLE.routes:
        if any(rc.kind == "ean" and rc.items in (None, "access_points")
               for rc in route.records):
            assert "clearing.restricted" in route.field_rules, route.template


# --- D1/D9: the IT provider's answers, record by record ---------------------

def _provider_world() -> RelationIndex:
    return RelationIndex([
        Relation("ticket", "INC1", "ores", "owner"),
        Relation("ticket", "INC1", "engie-it", "assignee"),
        Relation("ticket", "INC2", "fluvius", "owner"),  # nobody assigned
        Relation("ticket", "INC3", "sibelga", "owner"),
        Relation("ticket", "INC3", "other-it", "assignee"),  # another provider's
        Relation("asset", "AST1", "ores", "owner"),
        Relation("asset", "AST1", "engie-it", "maintainer"),
        Relation("asset", "AST2", "ores", "owner"),
        Relation("asset", "AST2", "engie-it", "assignee"),  # not a grant on assets
    ])


def test_provider_list_of_assigned_tickets_passes() -> None:
    body = {"tickets": [{"id": "INC1", "client": "ores", "assignee": "engie-it"}]}
    v = check("engie-it", "it-provider", "/itsm/tickets", body, _provider_world())
    assert v.decision.allowed and v.decision.resources == ("INC1",)


@pytest.mark.parametrize("stray", ["INC2", "INC3", "INC404"])
@pytest.mark.parametrize("position", [0, 1])
def test_one_unassigned_ticket_withholds_the_providers_whole_list(stray: str,
                                                                  position: int) -> None:
    """The platform's own answer says the provider is the assignee; the feed
    says it is not: the feed decides, and nothing of the list goes out."""
    tickets = [{"id": "INC1", "client": "ores", "assignee": "engie-it"}]
    tickets.insert(position, {"id": stray, "client": "fluvius", "assignee": "engie-it"})
    v = check("engie-it", "it-provider", "/itsm/tickets", {"tickets": tickets},
              _provider_world())
    assert not v.decision.allowed
    assert (v.decision.status, v.decision.reason) == (502, "foreign-record")
    assert v.decision.resources == (stray,) and v.body is None


def test_provider_assets_only_where_it_maintains() -> None:
    ok = check("engie-it", "it-provider", "/itsm/assets", {"assets": [{"id": "AST1"}]},
               _provider_world())
    assert ok.decision.allowed
    v = check("engie-it", "it-provider", "/itsm/assets",
              {"assets": [{"id": "AST1"}, {"id": "AST2"}]}, _provider_world())
    assert v.decision.reason == "foreign-record" and v.decision.resources == ("AST2",)


# --- Connect My Home: the members a non-coordinator may see -----------------

EXTRA = {"household_phone": "+32 470 12 34 56", "cadastral_parcel": "92001A0123",
         "notes": "dog in the garden", "eans": [EAN_A], "internal_ref": "ORES-77"}


def _cmh_world() -> RelationIndex:
    return RelationIndex([
        *build_relations(),
        Relation("cmh-request", "CMH1", "resa", "participant"),
        Relation("cmh-connection", "CMH1-4", "resa", "operator"),
    ])


def _cmh_request() -> dict[str, Any]:
    return {"id": "CMH1", "coordinator": "ores", "status": "open", "created": "2026-06-01",
            "site": {"street": "Chemin 1", "postal_code": "5000", "city": "Namur"},
            "connections": [
                {"id": "CMH1-1", "operator": "ores", "utility": "electricity"},
                {"id": "CMH1-2", "operator": "proximus", "utility": "telecom"},
                {"id": "CMH1-3", "operator": "swde", "utility": "water"},
                {"id": "CMH1-4", "operator": "resa", "utility": "gas"}],
            **EXTRA}


@pytest.mark.parametrize("who,kind", [("proximus", "telecom"), ("swde", "water"),
                                      ("resa", "dso")])
@pytest.mark.parametrize("path,body", [
    ("/cmh/requests/CMH1", _cmh_request()),
    ("/cmh/requests", {"requests": [_cmh_request()]}),
], ids=["detail", "list"])
def test_cmh_extra_top_level_members_never_reach_an_operator(who: str, kind: str, path: str,
                                                             body: Any) -> None:
    v = check(who, kind, path, body, _cmh_world())
    assert v.decision.allowed and v.changed
    rec = v.body["requests"][0] if "requests" in v.body else v.body
    assert set(rec) <= {"id", "coordinator", "site", "connections", "created", "status"}
    for value in ("+32 470", "92001A0123", "dog in the garden", "ORES-77"):
        assert value not in repr(v.body), value
    assert [c["operator"] for c in rec["connections"]] == [who]


def test_cmh_coordinator_keeps_the_whole_request() -> None:
    v = check("ores", "dso", "/cmh/requests/CMH1", _cmh_request(), _cmh_world())
    assert v.decision.allowed and not v.changed
    assert {k: v.body[k] for k in EXTRA} == EXTRA
