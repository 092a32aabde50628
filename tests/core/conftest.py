"""A small hand-built world for the pure decision tests, with a frozen clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.core.identifiers import with_check_digit
from gateway.core.model import Caller, Principal, Relation, Tenant
from gateway.core.relations.index import RelationIndex

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)

EAN_A = with_check_digit("54144800000000001")  # ORES grid, supplier lumen since NOW-100d
EAN_B = with_check_digit("54144900000000002")  # Fluvius grid, supplier kempen
EAN_D3 = with_check_digit("54144800000000003")  # drop by lumen, switch to kempen
METER_ORES = "1SAG0000000001"
METER_MOVED = "1SAG0000000002"  # fluvius until NOW-1d 12:00, then sibelga
METER_WATER = "3WTR0000000001"  # pidpa, paired with an ORES meter
SWITCH = NOW - DAY


HES_MEMBERS = {"ores", "fluvius", "sibelga", "resa", "pidpa", "dewatergroep", "farys"}


def tenant(tid: str, kind: str, roles: frozenset[str] = frozenset({"reader"})) -> Caller:
    p = Principal(tid, "service", "api", roles)
    t = Tenant(tid, tid, kind, principals={("service", "api"): p},
               memberships=frozenset({"hes_consortium"} if tid in HES_MEMBERS else ()))
    return Caller(t, p)


@pytest.fixture()
def relations() -> RelationIndex:
    return build_relations()


def build_relations() -> RelationIndex:
    return RelationIndex([
        Relation("meter", METER_ORES, "ores", "owner"),
        Relation("meter", METER_MOVED, "fluvius", "owner", None, SWITCH),
        Relation("meter", METER_MOVED, "sibelga", "owner", SWITCH, None),
        Relation("meter", METER_WATER, "pidpa", "owner"),
        Relation("ean", EAN_A, "ores", "grid-operator"),
        Relation("ean", EAN_A, "mosa-energie", "supplier", NOW - 900 * DAY, NOW - 100 * DAY),
        Relation("ean", EAN_A, "lumen-energie", "supplier", NOW - 100 * DAY, NOW + 300 * DAY),
        Relation("ean", EAN_A, "cpas-namur", "mandate"),
        Relation("ean", EAN_B, "fluvius", "grid-operator"),
        Relation("ean", EAN_B, "kempen-power", "supplier", NOW - 2000 * DAY, NOW + 300 * DAY),
        Relation("ean", EAN_B, "mosa-energie", "mandate", NOW - 10 * DAY, NOW + 300 * DAY),
        Relation("ean", EAN_D3, "ores", "grid-operator"),
        Relation("ean", EAN_D3, "lumen-energie", "supplier", NOW - 400 * DAY, NOW + 7 * DAY),
        Relation("ean", EAN_D3, "kempen-power", "supplier", NOW - DAY, NOW + 700 * DAY),
        Relation("cmh-request", "CMH1", "ores", "coordinator"),
        Relation("cmh-request", "CMH1", "ores", "participant"),
        Relation("cmh-request", "CMH1", "proximus", "participant"),
        Relation("cmh-request", "CMH1", "swde", "participant"),
        Relation("cmh-connection", "CMH1-1", "ores", "operator"),
        Relation("cmh-connection", "CMH1-2", "proximus", "operator"),
        Relation("ticket", "INC1", "ores", "owner"),
        Relation("ticket", "INC1", "engie-it", "assignee"),
        Relation("ticket", "INC2", "fluvius", "owner"),
    ])
