"""D2, D4: the grid operator's customer portal reads an access point and its
consumption for one customer, only while (and for when) that customer lives
there, proven by the meter number (gateway.core.occupancy)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gateway.core.catalog import default_route_table
from gateway.core.decide import RequestFacts
from gateway.core.model import Caller, Decision, Principal, Relation, Tenant
from gateway.core.occupancy import OCCUPANCY, OCCUPANT, decide_for_customer, occupancy_id
from gateway.core.push.records import ACCESS_POINT, METER_EAN, meter_ean_id
from gateway.core.relations.index import RelationIndex

from .conftest import DAY, EAN_A, NOW

METER = "1SAG0000000001"
OLD_METER = "1SAG0000000009"  # replaced 100 days ago
MOVED_IN = NOW - 400 * DAY
FEED_RELATIONS = [
    Relation("ean", EAN_A, "ores", "grid-operator"),
    Relation(METER_EAN, meter_ean_id(METER, EAN_A), "ores", ACCESS_POINT, NOW - 100 * DAY, None),
    Relation(METER_EAN, meter_ean_id(OLD_METER, EAN_A), "ores", ACCESS_POINT, None,
             NOW - 100 * DAY),
    Relation(OCCUPANCY, occupancy_id("jan", EAN_A), "ores", OCCUPANT, MOVED_IN, None),
    Relation(OCCUPANCY, occupancy_id("piet", EAN_A), "ores", OCCUPANT, MOVED_IN - 900 * DAY,
             MOVED_IN),
    # an occupancy the feed gives another grid operator: not the portal's
    Relation(OCCUPANCY, occupancy_id("els", EAN_A), "fluvius", OCCUPANT, MOVED_IN, None),
]


@pytest.fixture(scope="module")
def feed() -> RelationIndex:
    return RelationIndex(FEED_RELATIONS)


PORTAL = Principal("ores", "service", "customer-portal", frozenset({"customer-portal"}))
CALLER = Caller(Tenant("ores", "ORES", "dso", principals={PORTAL.key[1:]: PORTAL}), PORTAL)
TABLE = default_route_table()


def ask(feed: RelationIndex, path: str, customer: str | None, meter: str | None,
        query: dict[str, str] | None = None, method: str = "GET") -> Decision:
    found = TABLE.lookup(method, path)
    assert found.match is not None
    facts = RequestFacts(dict(found.match.params), query or {})
    return decide_for_customer(CALLER, found.match.route, facts, customer, meter, feed, NOW)


def days(first: int, last: int) -> dict[str, str]:
    """A consumption window from ``first`` to ``last`` days ago (inclusive days)."""
    return {"from": (NOW - first * DAY).date().isoformat(),
            "to": (NOW - last * DAY).date().isoformat()}


DETAIL = f"/clearing/access-points/{EAN_A}"
CONSUMPTION = f"/clearing/access-points/{EAN_A}/consumption"


def test_the_occupant_with_the_right_meter_number_reads_it(feed: RelationIndex) -> None:
    d = ask(feed, DETAIL, "jan", METER)
    assert d.allowed and d.reason == OCCUPANT and d.resources == (EAN_A,)
    assert ask(feed, CONSUMPTION, "jan", METER, days(30, 1)).allowed


@pytest.mark.parametrize(("customer", "meter", "reason", "status"), [
    ("jan", "1SAG0000000002", "meter-number-mismatch", 403),  # a guess
    ("jan", OLD_METER, "meter-number-mismatch", 403),  # the meter that was there before
    ("landlord", METER, "no-occupancy", 403),  # "must ask his tenants"
    ("piet", METER, "no-occupancy", 403),  # moved out
    ("els", METER, "no-occupancy", 403),  # another grid operator's feed entry
    (None, METER, "on-behalf-of-missing", 400),
    ("jan/../x", METER, "on-behalf-of-missing", 400),
    ("jan", None, "meter-number-missing", 400),
    ("jan", "not a meter", "meter-number-missing", 400),
])
def test_the_access_point_is_refused(feed: RelationIndex, customer: str | None,
                                     meter: str | None, reason: str, status: int) -> None:
    d = ask(feed, DETAIL, customer, meter)
    assert not d.allowed and (d.reason, d.status) == (reason, status)


def test_consumption_only_inside_the_occupancy(feed: RelationIndex) -> None:
    # The current occupant: not before it moved in.
    assert ask(feed, CONSUMPTION, "jan", METER, days(399, 1)).allowed
    d = ask(feed, CONSUMPTION, "jan", METER, days(401, 1))
    assert not d.allowed and d.reason == "window-outside-occupancy"
    # The former occupant: its own period, with the meter that was there then.
    assert ask(feed, CONSUMPTION, "piet", OLD_METER, days(600, 500)).allowed
    d = ask(feed, CONSUMPTION, "piet", OLD_METER, days(410, 390))
    assert not d.allowed and d.reason == "window-outside-occupancy"
    d = ask(feed, CONSUMPTION, "piet", METER, days(600, 500))  # installed after it left
    assert not d.allowed and d.reason == "meter-number-mismatch"


def test_at_most_three_years_back_even_for_a_long_occupancy(feed: RelationIndex) -> None:
    d = ask(feed, CONSUMPTION, "piet", OLD_METER, days(3 * 365 + 10, 3 * 365))
    assert not d.allowed and d.reason == "history-beyond-three-years"


@pytest.mark.parametrize("path", ["/clearing/access-points", "/hes/meters",
                                  f"/hes/meters/{METER}"])
def test_the_portal_reads_nothing_else(feed: RelationIndex, path: str) -> None:
    d = ask(feed, path, "jan", METER)
    assert not d.allowed and d.reason == "not-a-customer-route"


def test_a_window_that_reaches_today_is_covered_by_a_current_occupancy(feed: RelationIndex) -> None:
    assert ask(feed, CONSUMPTION, "jan", METER, days(10, 0)).allowed
    assert timedelta(0) < NOW - MOVED_IN
