"""D2: a supplier reads of an access point what the market messages carry,
and the customer's data only where it supplied them itself
(gateway.core.fields.clearing_supplier_view)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.core.fields import SUPPLIER_ACCESS_POINT_FIELDS, clearing_supplier_view

from .conftest import EAN_A, NOW, build_relations, tenant

RECORD: dict[str, Any] = {
    "ean": EAN_A, "energy": "electricity", "grid_operator": "ores",
    "grid_operator_gln": "5410000000019", "region": "wallonia",
    "address": {"street": "Rue de la Station 1", "postal_code": "5000", "city": "Namur"},
    "meter": {"serial": "1SAG0000000001", "type": "smart", "communicating": True,
              "firmware": "T211-4.2", "relay": "connected"},
    "customer": {"name": "Jan Peeters", "supplied_by": "lumen-energie"},
    "contracts": [{"supplier": "lumen-energie"}],
    "restricted": None,
    # what the access register holds but no market message carries to a supplier
    "customer_phone": "0470 12 34 56", "consumption_profile": "S21", "notes": "dog",
    "national_register_number": "85073003328", "bank_account": "BE68539007547034",
}


def view(kind: str, tid: str, record: dict[str, Any] | None = None) -> tuple[Any, Any]:
    body = {"access_points": [copy.deepcopy(record or RECORD)]}
    changed = clearing_supplier_view(tenant(tid, kind), body, build_relations(), NOW)
    return changed, body["access_points"][0]


def test_a_supplier_sees_the_market_message_fields_and_nothing_else() -> None:
    changed, rec = view("supplier", "lumen-energie")
    assert changed is True
    removed = set(RECORD) - set(rec)
    assert removed == {"customer_phone", "consumption_profile", "notes",
                       "national_register_number", "bank_account"}
    assert set(rec) <= SUPPLIER_ACCESS_POINT_FIELDS
    assert rec["meter"] == {"serial": "1SAG0000000001", "type": "smart", "communicating": True}
    assert rec["customer"] == RECORD["customer"]  # it supplied them itself


def test_another_supplier_s_customer_data_are_removed() -> None:
    _, rec = view("supplier", "kempen-power")
    assert "customer" not in rec


@pytest.mark.parametrize("customer", [{"name": "Jan Peeters"}, "Jan Peeters", None,
                                      {"name": "Jan", "supplied_by": None}])
def test_customer_data_without_provenance_are_removed(customer: Any) -> None:
    _, rec = view("supplier", "lumen-energie", {**RECORD, "customer": customer})
    assert "customer" not in rec


def test_a_meter_of_unknown_shape_is_removed() -> None:
    _, rec = view("supplier", "lumen-energie", {**RECORD, "meter": "1SAG0000000001"})
    assert "meter" not in rec


@pytest.mark.parametrize(("kind", "tid"), [("dso", "ores"), ("social-welfare", "cpas-namur")])
def test_other_kinds_are_not_this_rule_s_business(kind: str, tid: str) -> None:
    changed, rec = view(kind, tid)
    assert changed is False and rec == RECORD


def test_an_answer_it_cannot_read_is_withheld() -> None:
    body = {"access_points": ["not a record"]}
    assert clearing_supplier_view(tenant("lumen-energie", "supplier"), body,
                                  build_relations(), NOW) is None
