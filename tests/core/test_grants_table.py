"""Which tenant kind reaches which route through which relation (D1, D2, D4,
D6, D9), written out as a table and checked against the route catalogue
both ways: every row that grants is granted, every relation not in a row is
refused.

The table is the policy a reviewer signs off; it is spelled out here, not
read from ``gateway.core.catalog``, so widening a grant there (a water
company reading the clearing register under a mandate, the IT provider
reading an asset it is only the assignee or the owner of) fails this test.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import pytest

from gateway.core.catalog import ROUTES, default_route_table
from gateway.core.check import check_response
from gateway.core.decide import RequestFacts, decide
from gateway.core.identifiers import with_check_digit, with_nrn_check
from gateway.core.model import Caller, Principal, Relation, Tenant
from gateway.core.relations.index import RelationIndex
from gateway.core.routes import Route

from .conftest import NOW

_CLIENTS = ("dso", "water", "telecom", "supplier", "social-welfare", "clearing-house")
_OWNER = {"owner"}

# route template -> tenant kind -> the relations that grant it. A kind that is
# not in a row has no access through any relation.
HES = {"dso": _OWNER, "water": _OWNER}  # D5: the consortium's own meters only
CLEARING = {"dso": {"grid-operator"}, "supplier": {"supplier", "mandate"},  # D2, D4
            "social-welfare": {"mandate"}}  # a welfare centre's permanent mandate
CMH = {"dso": {"coordinator", "participant"}, "water": {"participant"},
       "telecom": {"participant"}}
CMH_STATUS = {"dso": {"operator"}, "water": {"operator"}, "telecom": {"operator"}}
# D9: the provider only what is assigned to it (tickets) or what it maintains (assets).
TICKETS = {**{k: _OWNER for k in _CLIENTS}, "it-provider": {"assignee"}}
ASSETS = {**{k: _OWNER for k in _CLIENTS}, "it-provider": {"maintainer"}}
PERSONS = {k: _OWNER for k in _CLIENTS}  # D8/D9: never the provider

GRANTS: Mapping[tuple[str, str], Mapping[str, set[str]]] = {
    ("GET", "/hes/meters"): HES,
    ("GET", "/hes/meters/{serial}"): HES,
    ("GET", "/hes/meters/{serial}/readings"): HES,
    ("POST", "/hes/meters/{serial}/operations"): HES,
    ("GET", "/clearing/access-points"): CLEARING,
    ("GET", "/clearing/access-points/{ean}"): CLEARING,
    ("GET", "/clearing/access-points/{ean}/consumption"): CLEARING,
    ("GET", "/cmh/requests"): CMH,
    ("GET", "/cmh/requests/{request_id}"): CMH,
    ("POST", "/cmh/requests/{request_id}/connections/{connection_id}/status"): CMH_STATUS,
    ("GET", "/itsm/tickets"): TICKETS,
    ("GET", "/itsm/tickets/{ticket_id}"): TICKETS,
    ("GET", "/itsm/assets"): ASSETS,
    ("GET", "/itsm/assets/{asset_id}"): ASSETS,
    ("GET", "/itsm/persons/{nrn}"): PERSONS,
}

KINDS = ("dso", "water", "telecom", "supplier", "social-welfare", "clearing-house",
         "it-provider", "shared-system")
RELATIONS = ("owner", "grid-operator", "supplier", "mandate", "drop-initiator", "coordinator",
             "participant", "operator", "assignee", "maintainer")

EAN = with_check_digit("54144800000000001")
NRN = with_nrn_check("850101001")
# A concrete request per route: path, query, and the resource a relation names.
REQUESTS: Mapping[tuple[str, str], tuple[str, dict[str, str], tuple[str, str]]] = {
    ("GET", "/hes/meters"): ("/hes/meters", {}, ("meter", "1SAG0000000001")),
    ("GET", "/hes/meters/{serial}"): ("/hes/meters/1SAG0000000001", {},
                                      ("meter", "1SAG0000000001")),
    ("GET", "/hes/meters/{serial}/readings"): (
        "/hes/meters/1SAG0000000001/readings",
        {"date": (NOW - timedelta(days=1)).date().isoformat()}, ("meter", "1SAG0000000001")),
    ("POST", "/hes/meters/{serial}/operations"): (
        "/hes/meters/1SAG0000000001/operations", {}, ("meter", "1SAG0000000001")),
    ("GET", "/clearing/access-points"): ("/clearing/access-points", {}, ("ean", EAN)),
    ("GET", "/clearing/access-points/{ean}"): (f"/clearing/access-points/{EAN}", {},
                                               ("ean", EAN)),
    ("GET", "/clearing/access-points/{ean}/consumption"): (
        f"/clearing/access-points/{EAN}/consumption",
        {"from": (NOW - timedelta(days=30)).date().isoformat(),
         "to": (NOW - timedelta(days=1)).date().isoformat()}, ("ean", EAN)),
    ("GET", "/cmh/requests"): ("/cmh/requests", {}, ("cmh-request", "CMH1")),
    ("GET", "/cmh/requests/{request_id}"): ("/cmh/requests/CMH1", {},
                                            ("cmh-request", "CMH1")),
    ("POST", "/cmh/requests/{request_id}/connections/{connection_id}/status"): (
        "/cmh/requests/CMH1/connections/CMH1-1/status", {}, ("cmh-connection", "CMH1-1")),
    ("GET", "/itsm/tickets"): ("/itsm/tickets", {}, ("ticket", "INC1")),
    ("GET", "/itsm/tickets/{ticket_id}"): ("/itsm/tickets/INC1", {}, ("ticket", "INC1")),
    ("GET", "/itsm/assets"): ("/itsm/assets", {}, ("asset", "AST1")),
    ("GET", "/itsm/assets/{asset_id}"): ("/itsm/assets/AST1", {}, ("asset", "AST1")),
    ("GET", "/itsm/persons/{nrn}"): (f"/itsm/persons/{NRN}", {}, ("person", NRN)),
}


def caller(kind: str) -> Caller:
    # Every role a route may ask for, and consortium membership: only the
    # tenant kind and the relation differ between the rows.
    p = Principal("t1", "service", "api", frozenset({"reader", "meter-operator"}))
    t = Tenant("t1", "T1", kind, principals={("service", "api"): p},
               memberships=frozenset({"hes_consortium"}))
    return Caller(t, p)


def _list_body(key: tuple[str, str], rid: str) -> Any:
    """A list answer holding the one record the relation is about."""
    template = key[1]
    if template == "/hes/meters":
        return {"meters": [{"serial": rid}]}
    if template == "/clearing/access-points":
        return {"access_points": [{"ean": rid, "contracts": [], "restricted": None}]}
    if template == "/cmh/requests":
        return {"requests": [{"id": rid, "connections": [], "site": {}}]}
    return {template.rsplit("/", 1)[1]: [{"id": rid}]}


def reaches(key: tuple[str, str], kind: str, relation: str) -> bool:
    """Does a tenant of ``kind`` holding only ``relation`` on the resource get
    it through the route: the request decision, and for a list route the
    record check of the answer."""
    method, _ = key
    path, query, (rkind, rid) = REQUESTS[key]
    found = default_route_table().lookup(method, path)
    assert found.match is not None, path
    route, params = found.match.route, found.match.params
    relations = RelationIndex([Relation(rkind, rid, "t1", relation)])
    facts = RequestFacts(params, query)
    decision = decide(caller(kind), route, facts, relations, NOW)
    if not decision.allowed or route.resource is not None:
        return decision.allowed
    verdict = check_response(caller(kind), route, facts, relations, _list_body(key, rid), NOW)
    return verdict.decision.allowed


def test_the_table_names_every_route_of_the_catalogue() -> None:
    assert {(r.method, r.template) for r in ROUTES} == set(GRANTS)


@pytest.mark.parametrize("key", sorted(GRANTS), ids=lambda k: f"{k[0]} {k[1]}")
def test_catalogue_grants_are_exactly_the_table(key: tuple[str, str]) -> None:
    route: Route = next(r for r in ROUTES if (r.method, r.template) == key)
    assert {k: set(v) for k, v in route.grants.items()} == GRANTS[key]


@pytest.mark.parametrize("key", sorted(GRANTS), ids=lambda k: f"{k[0]} {k[1]}")
def test_each_kind_reaches_the_route_only_through_its_relations(key: tuple[str, str]) -> None:
    """Behaviour, not the catalogue's literal: for each tenant kind and each
    relation it could hold, the decision (and the record check of a list)
    lets it through exactly when the table says so."""
    wrong = []
    for kind in KINDS:
        for relation in RELATIONS:
            expected = relation in GRANTS[key].get(kind, set())
            if reaches(key, kind, relation) != expected:
                wrong.append(f"{kind} via {relation}: {'refused' if expected else 'served'}")
    assert wrong == []


@pytest.mark.parametrize("key,kind,relation", [
    # The rows a widened grant would break first (named so a failure reads well).
    (("GET", "/clearing/access-points/{ean}"), "water", "mandate"),
    (("GET", "/clearing/access-points/{ean}/consumption"), "water", "mandate"),
    (("GET", "/clearing/access-points"), "water", "mandate"),
    (("GET", "/itsm/assets/{asset_id}"), "it-provider", "assignee"),
    (("GET", "/itsm/assets/{asset_id}"), "it-provider", "owner"),
    (("GET", "/itsm/assets"), "it-provider", "assignee"),
    (("GET", "/itsm/assets"), "it-provider", "owner"),
    (("GET", "/itsm/tickets/{ticket_id}"), "it-provider", "owner"),
    (("GET", "/itsm/tickets/{ticket_id}"), "it-provider", "maintainer"),
    (("GET", "/itsm/persons/{nrn}"), "it-provider", "owner"),
    (("GET", "/hes/meters/{serial}"), "supplier", "owner"),
    (("GET", "/clearing/access-points/{ean}"), "dso", "mandate"),
])
def test_negative_rows(key: tuple[str, str], kind: str, relation: str) -> None:
    assert not reaches(key, kind, relation)


@pytest.mark.parametrize("key,kind,relation", [
    (("GET", "/clearing/access-points/{ean}"), "social-welfare", "mandate"),
    (("GET", "/clearing/access-points/{ean}/consumption"), "supplier", "mandate"),
    (("GET", "/itsm/assets/{asset_id}"), "it-provider", "maintainer"),
    (("GET", "/itsm/assets"), "it-provider", "maintainer"),
    (("GET", "/itsm/tickets"), "it-provider", "assignee"),
    (("GET", "/itsm/tickets/{ticket_id}"), "it-provider", "assignee"),
    (("GET", "/hes/meters/{serial}"), "water", "owner"),
])
def test_positive_rows(key: tuple[str, str], kind: str, relation: str) -> None:
    assert reaches(key, kind, relation)
