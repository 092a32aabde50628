"""decide(): pure, frozen clock. Rule ids from DOMAIN.md."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gateway.core.catalog import default_route_table
from gateway.core.decide import RequestFacts, decide
from gateway.core.relations import RelationIndex
from gateway.core.routes import Route

from .conftest import (
    EAN_A,
    EAN_B,
    METER_MOVED,
    METER_ORES,
    METER_WATER,
    NOW,
    SWITCH,
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
