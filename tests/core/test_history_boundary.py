"""D4: consumption history reaches back at most three years, to the instant.

"Three years" is, in the code, 3 x 365 + 1 days: three calendar years with
the one leap day they hold at most. A ``from`` date means its midnight UTC,
so on a day at 00:00 UTC the same calendar date three years back (1096 days
before 2026-06-15 is 2023-06-15, across 29 February 2024) is the oldest date
allowed; one day more is refused. The number is written out here, not read
from the module: a limit a few days longer must fail this test.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.core.catalog import default_route_table
from gateway.core.decide import RequestFacts, decide
from gateway.core.relations.index import RelationIndex

from .conftest import EAN_A, build_relations, tenant

THREE_YEARS = timedelta(days=3 * 365 + 1)
MIDNIGHT = datetime(2026, 6, 15, 0, 0, tzinfo=UTC)
NOON = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
PATH = f"/clearing/access-points/{EAN_A}/consumption"


def history(start: str, now: datetime, relations: RelationIndex,
            who: tuple[str, str] = ("ores", "dso")) -> tuple[bool, str]:
    found = default_route_table().lookup("GET", PATH)
    assert found.match is not None
    facts = RequestFacts(found.match.params, {"from": start, "to": now.date().isoformat()})
    d = decide(tenant(*who), found.match.route, facts, relations, now)
    return d.allowed, d.reason


@pytest.fixture(scope="module")
def rels() -> RelationIndex:
    return build_relations()


def test_three_years_is_the_calendar_span_with_its_leap_day() -> None:
    assert datetime(2023, 6, 15, tzinfo=UTC) == MIDNIGHT - THREE_YEARS


def test_exactly_three_years_back_is_allowed_one_day_more_is_not(rels: RelationIndex) -> None:
    assert history("2023-06-15", MIDNIGHT, rels) == (True, "grid-operator")
    assert history("2023-06-14", MIDNIGHT, rels) == (False, "history-beyond-three-years")


@pytest.mark.parametrize("extra_days", [1, 2, 3, 5, 30])
def test_every_day_beyond_the_limit_is_refused(rels: RelationIndex, extra_days: int) -> None:
    start = (MIDNIGHT - THREE_YEARS - timedelta(days=extra_days)).date().isoformat()
    allowed, reason = history(start, MIDNIGHT, rels)
    assert not allowed and reason == "history-beyond-three-years"


def test_the_boundary_is_an_instant_not_a_date(rels: RelationIndex) -> None:
    """At noon the limit is noon three years back: a date-time ``from`` at that
    instant is allowed, one second earlier is refused, and the plain date
    (its midnight, twelve hours earlier) is refused too."""
    exact = (NOON - THREE_YEARS).isoformat()
    assert exact == "2023-06-15T12:00:00+00:00"
    assert history(exact, NOON, rels)[0]
    early = (NOON - THREE_YEARS - timedelta(seconds=1)).isoformat()
    assert history(early, NOON, rels) == (False, "history-beyond-three-years")
    assert history("2023-06-15", NOON, rels) == (False, "history-beyond-three-years")
    assert history("2023-06-16", NOON, rels)[0]


def test_the_limit_binds_a_mandate_holder_too(rels: RelationIndex) -> None:
    """D4: a welfare centre's permanent mandate does not lift the three years."""
    who = ("cpas-namur", "social-welfare")
    assert history("2023-06-15", MIDNIGHT, rels, who)[0]
    assert history("2023-06-14", MIDNIGHT, rels, who) == (False, "history-beyond-three-years")
