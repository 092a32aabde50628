"""decide(): pure, frozen clock. Rule ids from DOMAIN.md."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.catalog import default_route_table
from gateway.core.decide import (
    RequestFacts,
    _decide_resource,
    decide,
    request_window,
    resource_id,
)
from gateway.core.identifiers import is_valid_resource_id
from gateway.core.model import Caller, Decision
from gateway.core.relations.index import RelationIndex
from gateway.core.routes import Route

from .conftest import (
    DAY,
    EAN_A,
    EAN_B,
    METER_MOVED,
    METER_ORES,
    METER_WATER,
    NOW,
    SWITCH,
    build_relations,
    tenant,
)

TABLE = default_route_table()


def route(method: str, path: str) -> tuple[Route, dict[str, str]]:
    found = TABLE.lookup(method, path)
    assert found.match is not None, path
    return found.match.route, dict(found.match.params)


def ask(caller_id: str, kind: str, method: str, path: str, relations: RelationIndex,
        query: dict[str, str] | None = None, now=NOW, roles=frozenset({"reader"})):
    r, params = route(method, path)
    return decide(tenant(caller_id, kind, roles), r, RequestFacts(params, query or {}),
                  relations, now)


# --- D1: one operator never touches another's resource ---------------------

def test_dso_reads_own_meter(relations: RelationIndex) -> None:
    d = ask("ores", "dso", "GET", f"/hes/meters/{METER_ORES}", relations)
    assert d.allowed and d.reason == "owner"


def test_dso_cannot_read_other_dsos_meter(relations: RelationIndex) -> None:
    d = ask("fluvius", "dso", "GET", f"/hes/meters/{METER_ORES}", relations)
    assert not d.allowed and d.status == 403 and d.reason == "no-relation"


def test_water_meter_belongs_to_water_company_not_carrier_dso(relations: RelationIndex) -> None:
    # D5: the water meter talks through an ORES electricity meter; ORES is not its owner.
    assert ask("pidpa", "water", "GET", f"/hes/meters/{METER_WATER}", relations).allowed
    assert not ask("ores", "dso", "GET", f"/hes/meters/{METER_WATER}", relations).allowed


def test_unknown_resource_is_403_not_404(relations: RelationIndex) -> None:
    # No existence oracle: an unknown meter and a foreign one look the same.
    d = ask("ores", "dso", "GET", "/hes/meters/1SAG9999999999", relations)
    assert d.status == 403


def test_malformed_ean_is_400(relations: RelationIndex) -> None:
    bad = EAN_A[:-1] + str((int(EAN_A[-1]) + 1) % 10)
    d = ask("ores", "dso", "GET", f"/clearing/access-points/{bad}", relations)
    assert d.status == 400 and d.reason == "resource-id-malformed"


def test_meter_ownership_changes_over_time(relations: RelationIndex) -> None:
    now_owner = ask("sibelga", "dso", "GET", f"/hes/meters/{METER_MOVED}", relations)
    old_owner = ask("fluvius", "dso", "GET", f"/hes/meters/{METER_MOVED}", relations)
    assert now_owner.allowed and not old_owner.allowed
    # Readings of a day: whoever owned the meter during part of that day.
    two_days_ago = (SWITCH - timedelta(days=1)).date().isoformat()
    assert ask("fluvius", "dso", "GET", f"/hes/meters/{METER_MOVED}/readings", relations,
               {"date": two_days_ago}).allowed
    assert not ask("sibelga", "dso", "GET", f"/hes/meters/{METER_MOVED}/readings", relations,
                   {"date": two_days_ago}).allowed
    switch_day = SWITCH.date().isoformat()
    for owner in ("fluvius", "sibelga"):
        assert ask(owner, "dso", "GET", f"/hes/meters/{METER_MOVED}/readings", relations,
                   {"date": switch_day}).allowed


# --- D2: a supplier only while its contract runs -----------------------------

def test_supplier_with_current_contract(relations: RelationIndex) -> None:
    assert ask("lumen-energie", "supplier", "GET", f"/clearing/access-points/{EAN_A}",
               relations).allowed


def test_supplier_with_expired_contract_is_refused(relations: RelationIndex) -> None:
    d = ask("mosa-energie", "supplier", "GET", f"/clearing/access-points/{EAN_A}", relations)
    assert not d.allowed


def test_contract_window_is_checked_at_the_frozen_time(relations: RelationIndex) -> None:
    path = f"/clearing/access-points/{EAN_A}"
    assert ask("mosa-energie", "supplier", "GET", path, relations,
               now=NOW - timedelta(days=101)).allowed
    assert not ask("lumen-energie", "supplier", "GET", path, relations,
                   now=NOW - timedelta(days=101)).allowed


def test_supplier_history_only_inside_its_contract(relations: RelationIndex) -> None:
    path = f"/clearing/access-points/{EAN_A}/consumption"
    inside = {"from": (NOW - timedelta(days=90)).date().isoformat(),
              "to": (NOW - timedelta(days=1)).date().isoformat()}
    before = {"from": (NOW - timedelta(days=150)).date().isoformat(),
              "to": (NOW - timedelta(days=1)).date().isoformat()}
    assert ask("lumen-energie", "supplier", "GET", path, relations, inside).allowed
    d = ask("lumen-energie", "supplier", "GET", path, relations, before)
    assert not d.allowed and d.reason == "window-outside-contract"


# --- D4: history at most three years, mandates ------------------------------

def test_history_limited_to_three_years(relations: RelationIndex) -> None:
    path = f"/clearing/access-points/{EAN_A}/consumption"
    ok = {"from": (NOW - timedelta(days=3 * 365 - 1)).date().isoformat(),
          "to": NOW.date().isoformat()}
    too_old = {"from": (NOW - timedelta(days=3 * 365 + 5)).date().isoformat(),
               "to": NOW.date().isoformat()}
    assert ask("ores", "dso", "GET", path, relations, ok).allowed
    d = ask("ores", "dso", "GET", path, relations, too_old)
    assert d.reason == "history-beyond-three-years" and d.status == 403


def test_welfare_centre_permanent_mandate(relations: RelationIndex) -> None:
    path = f"/clearing/access-points/{EAN_A}/consumption"
    q = {"from": (NOW - timedelta(days=700)).date().isoformat(), "to": NOW.date().isoformat()}
    assert ask("cpas-namur", "social-welfare", "GET", path, relations, q).allowed
    assert not ask("cpas-namur", "social-welfare", "GET",
                   f"/clearing/access-points/{EAN_B}", relations).allowed


def test_signed_mandate_grants_history_while_valid(relations: RelationIndex) -> None:
    path = f"/clearing/access-points/{EAN_B}/consumption"
    q = {"from": (NOW - timedelta(days=500)).date().isoformat(), "to": NOW.date().isoformat()}
    assert ask("mosa-energie", "supplier", "GET", path, relations, q).allowed
    assert not ask("mosa-energie", "supplier", "GET", path, relations, q,
                   now=NOW - timedelta(days=11)).allowed


@pytest.mark.parametrize("query,reason", [
    ({}, "window-missing"),
    ({"from": "2026-01-01"}, "window-missing"),
    ({"from": "yesterday", "to": "2026-01-01"}, "window-malformed"),
    ({"from": "2026-03-01", "to": "2026-01-01"}, "window-inverted"),
    ({"from": "2027-03-01", "to": "2027-04-01"}, "window-in-future"),
])
def test_bad_windows_are_400(relations: RelationIndex, query: dict[str, str],
                             reason: str) -> None:
    d = ask("ores", "dso", "GET", f"/clearing/access-points/{EAN_A}/consumption", relations,
            query)
    assert d.status == 400 and d.reason == reason


# --- D6: role based, need to know -------------------------------------------

def test_kind_without_business_on_a_system_is_refused(relations: RelationIndex) -> None:
    d = ask("proximus", "telecom", "GET", "/hes/meters", relations)
    assert d.reason == "tenant-kind-not-permitted"
    d = ask("lumen-energie", "supplier", "GET", "/cmh/requests", relations)
    assert d.reason == "tenant-kind-not-permitted"


def test_hes_serves_its_consortium_only(relations: RelationIndex) -> None:
    # SWDE is a water company but not one of the seven HES companies.
    assert ask("swde", "water", "GET", "/hes/meters", relations).reason == "not-a-member"
    assert ask("pidpa", "water", "GET", "/hes/meters", relations).allowed


def test_remote_operation_needs_meter_operator_role(relations: RelationIndex) -> None:
    path = f"/hes/meters/{METER_ORES}/operations"
    assert ask("ores", "dso", "POST", path, relations).reason == "missing-role"
    assert ask("ores", "dso", "POST", path, relations,
               roles=frozenset({"reader", "meter-operator"})).allowed


def test_it_provider_sees_only_assigned_tickets(relations: RelationIndex) -> None:
    assert ask("engie-it", "it-provider", "GET", "/itsm/tickets/INC1", relations).allowed
    assert not ask("engie-it", "it-provider", "GET", "/itsm/tickets/INC2", relations).allowed


def test_cmh_operator_only_its_own_connection(relations: RelationIndex) -> None:
    path = "/cmh/requests/CMH1/connections/{}/status"
    assert ask("proximus", "telecom", "POST", path.format("CMH1-2"), relations).allowed
    assert not ask("proximus", "telecom", "POST", path.format("CMH1-1"), relations).allowed


def test_lists_are_allowed_and_checked_on_the_way_back(relations: RelationIndex) -> None:
    d = ask("ores", "dso", "GET", "/hes/meters", relations)
    assert d.allowed and d.reason == "list"


def test_admin_principals_have_no_data_access(relations: RelationIndex) -> None:
    d = ask("ores", "dso", "GET", f"/hes/meters/{METER_ORES}", relations,
            roles=frozenset({"security-admin"}))
    assert d.reason == "missing-role"


# --- decide()'s fast path (the per-request budget) decides like the general one --

def _former_decide(caller: Caller, route: Route, facts: RequestFacts,
                   relations: RelationIndex, now: datetime) -> Decision:
    """decide() before its fast path: one sequence of checks for every route,
    the relation looked up with find()."""
    if "reader" not in caller.principal.roles:
        return Decision.deny("missing-role")
    names = route.grants.get(caller.tenant.kind)
    if names is None:
        return Decision.deny("tenant-kind-not-permitted")
    if route.member_of is not None and route.member_of not in caller.tenant.memberships:
        return Decision.deny("not-a-member")
    if route.required_role is not None and route.required_role not in caller.principal.roles:
        return Decision.deny("missing-role")
    window = request_window(route, facts, now)
    if isinstance(window, Decision):
        return window
    if route.resource is None:
        return Decision.allow("list")
    rid = resource_id(route, facts)
    if rid is None:
        return Decision.deny("resource-id-missing", 400)
    if not is_valid_resource_id(route.resource.kind, rid):
        return Decision.deny("resource-id-malformed", 400, (rid,))
    if window is not None:
        return _decide_resource(caller, route, rid, names, window, relations, now)
    found = relations.find(route.resource.kind, rid, caller.tenant.id, names, now)
    if found is None:
        return Decision.deny("no-relation", resources=(rid,))
    return Decision.allow(found.relation, (rid,))


_TENANTS = (("ores", "dso"), ("fluvius", "dso"), ("sibelga", "dso"), ("swde", "water"),
            ("pidpa", "water"), ("lumen-energie", "supplier"), ("kempen-power", "supplier"),
            ("mosa-energie", "supplier"), ("cpas-namur", "social-welfare"),
            ("proximus", "telecom"), ("engie-it", "it-provider"), ("atrias", "clearing-house"))
_IDS = (METER_ORES, METER_MOVED, METER_WATER, EAN_A, EAN_B, EAN_A[:-1] + "0", "1sag0000000001",
        "CMH1", "CMH1-1", "CMH1-2", "INC1", "INC2", "1SAG9999999999", "-x", "é")
_DAYS = st.sampled_from(((NOW - 30 * DAY).date().isoformat(), NOW.date().isoformat(),
                         (NOW + 2 * DAY).date().isoformat(), "2026-13-01", "x"))


@settings(max_examples=400, deadline=None)
@given(who=st.sampled_from(_TENANTS),
       roles=st.sampled_from((frozenset({"reader"}), frozenset({"reader", "meter-operator"}),
                              frozenset({"admin"}))),
       route_at=st.integers(0, len(TABLE.routes) - 1), rid=st.sampled_from(_IDS),
       drop_param=st.booleans(),
       query=st.dictionaries(st.sampled_from(("date", "from", "to", "id")), _DAYS, max_size=3),
       body=st.one_of(st.none(), st.dictionaries(st.sampled_from(("id", "serial", "ean")),
                                                 st.sampled_from(_IDS), max_size=2)))
def test_decide_equals_the_former_decide(who: tuple[str, str], roles: frozenset[str],
                                         route_at: int, rid: str, drop_param: bool,
                                         query: dict[str, str], body: object) -> None:
    relations = build_relations()
    r = TABLE.routes[route_at]
    params = {seg[1:-1]: rid for seg in r.segments if seg.startswith("{")}
    if drop_param and params:
        params.pop(next(iter(params)))
    caller = tenant(*who, roles)
    facts = RequestFacts(params, query, body)
    for now in (NOW, SWITCH - timedelta(hours=1), NOW - 200 * DAY):
        assert decide(caller, r, facts, relations, now) == _former_decide(
            caller, r, facts, relations, now)


def test_decide_equals_the_former_decide_on_every_route_tenant_and_id() -> None:
    relations = build_relations()
    windows = ({}, {"date": (SWITCH - DAY).date().isoformat()},
               {"from": (NOW - 150 * DAY).date().isoformat(), "to": NOW.date().isoformat()})
    for r in TABLE.routes:
        for who in _TENANTS:
            for rid in _IDS:
                params = {seg[1:-1]: rid for seg in r.segments if seg.startswith("{")}
                for query in windows if r.window else ({},):
                    facts = RequestFacts(params, query, {"id": rid})
                    for roles in (frozenset({"reader"}), frozenset({"reader", "meter-operator"})):
                        caller = tenant(*who, roles)
                        for now in (NOW, SWITCH - timedelta(hours=1), NOW - 200 * DAY):
                            assert decide(caller, r, facts, relations, now) == _former_decide(
                                caller, r, facts, relations, now), (r.template, who, rid, now)


def test_d3_drop_initiator_grants_no_access_of_its_own(relations: RelationIndex) -> None:
    """D3's ``drop-initiator`` relation only says who may see the restricted
    block; it is not a grant: without a running contract (D2) or a mandate, the
    initiating supplier reaches nothing on the access point."""
    from gateway.core.fields import DROP_INITIATOR
    from gateway.core.model import Relation

    index = RelationIndex([*relations, Relation("ean", EAN_B, "lumen-energie", DROP_INITIATOR,
                                                NOW - 10 * DAY, NOW + 10 * DAY)])
    for path in (f"/clearing/access-points/{EAN_B}",
                 f"/clearing/access-points/{EAN_B}/consumption"):
        query = {"from": (NOW - 5 * DAY).date().isoformat(),
                 "to": (NOW - DAY).date().isoformat()} if path.endswith("consumption") else {}
        d = ask("lumen-energie", "supplier", "GET", path, index, query)
        assert not d.allowed and d.reason == "no-relation", path


# --- the window's edges (D2, D4) and what a decision names (D10) ------------

@pytest.mark.parametrize("query,reason", [
    ({}, "window-missing"),
    ({"date": "someday"}, "window-malformed"),
    ({"date": "2027-03-01"}, "window-in-future"),
])
def test_a_readings_day_is_required(relations: RelationIndex, query: dict[str, str],
                                    reason: str) -> None:
    d = ask("ores", "dso", "GET", f"/hes/meters/{METER_ORES}/readings", relations, query)
    assert (d.status, d.reason) == (400, reason)


def test_to_is_an_inclusive_day_and_from_after_to_is_inverted() -> None:
    r, params = route("GET", f"/clearing/access-points/{EAN_A}/consumption")
    day = (NOW - timedelta(days=10)).date().isoformat()
    one_day = request_window(r, RequestFacts(params, {"from": day, "to": day}), NOW)
    assert one_day is not None and not isinstance(one_day, Decision)
    assert one_day.end - one_day.start == timedelta(days=1)  # "to" counts whole
    after = (NOW - timedelta(days=9)).date().isoformat()
    inverted = request_window(r, RequestFacts(params, {"from": after, "to": day}), NOW)
    assert isinstance(inverted, Decision) and inverted.reason == "window-inverted"


def test_a_window_holds_its_start_not_its_end() -> None:
    r, params = route("GET", f"/clearing/access-points/{EAN_A}/consumption")
    day = (NOW - timedelta(days=10)).date().isoformat()
    w = request_window(r, RequestFacts(params, {"from": day, "to": day}), NOW)
    assert w is not None and not isinstance(w, Decision)
    assert w.contains(w.start) and not w.contains(w.end)
    assert w.contains(w.end - timedelta(microseconds=1))


def test_a_decision_names_its_relation_and_resource(relations: RelationIndex) -> None:
    allowed = ask("ores", "dso", "GET", f"/hes/meters/{METER_ORES}", relations)
    assert (allowed.reason, allowed.resources) == ("owner", (METER_ORES,))
    denied = ask("ores", "dso", "GET", f"/hes/meters/{METER_WATER}", relations)
    assert (denied.status, denied.reason, denied.resources) == (
        403, "no-relation", (METER_WATER,))
    path = f"/clearing/access-points/{EAN_A}/consumption"
    inside = {"from": (NOW - timedelta(days=90)).date().isoformat(),
              "to": (NOW - timedelta(days=1)).date().isoformat()}
    before = {"from": (NOW - timedelta(days=150)).date().isoformat(),
              "to": (NOW - timedelta(days=1)).date().isoformat()}
    within = ask("lumen-energie", "supplier", "GET", path, relations, inside)
    assert (within.reason, within.resources) == ("supplier", (EAN_A,))
    outside = ask("lumen-energie", "supplier", "GET", path, relations, before)
    assert (outside.reason, outside.resources) == ("window-outside-contract", (EAN_A,))
    # A windowed route takes the full path: the same names there.
    grid = ask("ores", "dso", "GET", path, relations, inside)
    assert (grid.reason, grid.resources) == ("grid-operator", (EAN_A,))
    other = f"/clearing/access-points/{EAN_B}/consumption"
    stranger = ask("lumen-energie", "supplier", "GET", other, relations, inside)
    assert (stranger.status, stranger.reason, stranger.resources) == (
        403, "no-relation", (EAN_B,))
    day = {"date": (NOW - timedelta(days=3)).date().isoformat()}
    own = ask("ores", "dso", "GET", f"/hes/meters/{METER_ORES}/readings", relations, day)
    assert (own.reason, own.resources) == ("owner", (METER_ORES,))
    water = ask("ores", "dso", "GET", f"/hes/meters/{METER_WATER}/readings", relations, day)
    assert (water.status, water.reason, water.resources) == (403, "no-relation", (METER_WATER,))


def test_a_window_may_start_at_this_very_instant() -> None:
    """At midnight, "from today" starts now: allowed (only a start after now
    is in the future)."""
    r, params = route("GET", f"/clearing/access-points/{EAN_A}/consumption")
    midnight = NOW.replace(hour=0, minute=0, second=0, microsecond=0)
    today = midnight.date().isoformat()
    w = request_window(r, RequestFacts(params, {"from": today, "to": today}), midnight)
    assert w is not None and not isinstance(w, Decision) and w.start == midnight
    later = request_window(r, RequestFacts(params, {"from": today, "to": today}),
                           midnight - timedelta(microseconds=1))
    assert isinstance(later, Decision) and later.reason == "window-in-future"
