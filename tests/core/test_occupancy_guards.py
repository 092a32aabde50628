"""D2, D4: the customer portal's guards at their edges (gateway.core.occupancy).

A feed with day-aligned changes, so that a window's midnight can meet a
move-in, a move-out or a meter swap exactly; and each refusal checked whole
(reason, status and the access point it names in the audit event).
"""

from __future__ import annotations

from datetime import datetime

import pytest

from gateway.core.catalog import default_route_table
from gateway.core.decide import RequestFacts
from gateway.core.model import Caller, Decision, Principal, Relation, Tenant, Verdict
from gateway.core.occupancy import OCCUPANCY, OCCUPANT, decide_for_customer, occupancy_id
from gateway.core.push.records import ACCESS_POINT, METER_EAN, meter_ean_id
from gateway.core.relations.index import RelationIndex

from .conftest import DAY, EAN_A, NOW

MIDNIGHT = NOW.replace(hour=0)
SWAP = MIDNIGHT - 50 * DAY  # the old meter out, the new one in, at midnight
ANN_IN, ANN_OUT = MIDNIGHT - 200 * DAY, MIDNIGHT - 20 * DAY  # ann left at midnight...
BOB_IN = ANN_OUT  # ...and bob moved in at that midnight
NEW_METER = "1SAG0000000001"
OLD_METER = "1SAG0000000009"
FOREIGN_METER = "1SAG0000000005"  # paired with the EAN only in another operator's feed

FEED = RelationIndex([
    Relation("ean", EAN_A, "ores", "grid-operator"),
    Relation(METER_EAN, meter_ean_id(OLD_METER, EAN_A), "ores", ACCESS_POINT, None, SWAP),
    Relation(METER_EAN, meter_ean_id(NEW_METER, EAN_A), "ores", ACCESS_POINT, SWAP, None),
    Relation(METER_EAN, meter_ean_id(FOREIGN_METER, EAN_A), "fluvius", ACCESS_POINT),
    Relation(OCCUPANCY, occupancy_id("ann", EAN_A), "ores", OCCUPANT, ANN_IN, ANN_OUT),
    Relation(OCCUPANCY, occupancy_id("bob", EAN_A), "ores", OCCUPANT, BOB_IN, None),
])

PORTAL = Principal("ores", "service", "customer-portal", frozenset({"customer-portal"}))
CALLER = Caller(Tenant("ores", "ORES", "dso", principals={PORTAL.key[1:]: PORTAL}), PORTAL)
TABLE = default_route_table()
DETAIL = f"/clearing/access-points/{EAN_A}"
CONSUMPTION = f"/clearing/access-points/{EAN_A}/consumption"


def ask(path: str, customer: str, meter: str, window: tuple[datetime, datetime] | None = None,
        now: datetime = NOW) -> Decision:
    """The portal's decision; ``window`` is the first and last day asked for."""
    found = TABLE.lookup("GET", path)
    assert found.match is not None
    query = {} if window is None else {"from": window[0].date().isoformat(),
                                       "to": window[1].date().isoformat()}
    facts = RequestFacts(dict(found.match.params), query)
    return decide_for_customer(CALLER, found.match.route, facts, customer, meter, FEED, now)


def refused(reason: str, status: int = 403, ean: str = EAN_A) -> Decision:
    return Decision(Verdict.DENY, reason, status, (ean,))


ALLOWED = Decision(Verdict.ALLOW, OCCUPANT, 200, (EAN_A,))


def test_a_window_from_the_move_in_day_is_inside_the_occupancy() -> None:
    # D4: the occupancy starts at midnight; a window starting then is the customer's.
    assert ask(CONSUMPTION, "bob", NEW_METER, (BOB_IN, MIDNIGHT - DAY)) == ALLOWED
    assert ask(CONSUMPTION, "bob", NEW_METER, (BOB_IN - DAY, MIDNIGHT - DAY)) == refused(
        "window-outside-occupancy")


def test_a_window_to_the_last_day_before_the_move_out_is_inside_the_occupancy() -> None:
    # D4: "only for the period of this customer's occupancy", up to its last day.
    assert ask(CONSUMPTION, "ann", NEW_METER, (ANN_OUT - 30 * DAY, ANN_OUT - DAY)) == ALLOWED
    assert ask(CONSUMPTION, "ann", NEW_METER, (ANN_OUT - 30 * DAY, ANN_OUT)) == refused(
        "window-outside-occupancy")


def test_the_meter_removed_at_the_midnight_a_window_starts_proves_nothing_for_it() -> None:
    # SECURITY (D4): the meter number proves the customer was there while that
    # meter was; a meter gone before the window's first instant is no proof.
    window = (SWAP, SWAP + 9 * DAY)
    assert ask(CONSUMPTION, "ann", OLD_METER, window) == refused("meter-number-mismatch")
    assert ask(CONSUMPTION, "ann", NEW_METER, window) == ALLOWED
    # One day earlier the window holds the old meter's last day: it proves it.
    assert ask(CONSUMPTION, "ann", OLD_METER, (SWAP - DAY, SWAP + 9 * DAY)) == ALLOWED


def test_at_the_instant_of_a_swap_both_views_take_the_new_meter_only() -> None:
    # Today's consumption asked at midnight (a window [now, now]) agrees with
    # the access point as it is now: the meter installed at this instant.
    for path, window in ((DETAIL, None), (CONSUMPTION, (SWAP, SWAP))):
        assert ask(path, "ann", NEW_METER, window, now=SWAP) == ALLOWED
        assert ask(path, "ann", OLD_METER, window, now=SWAP) == refused("meter-number-mismatch")


def test_a_pairing_in_another_operators_feed_is_no_proof() -> None:
    # D1: only the portal's own grid operator's feed says which meter is there.
    assert ask(DETAIL, "bob", FOREIGN_METER) == refused("meter-number-mismatch")
    assert ask(CONSUMPTION, "bob", FOREIGN_METER, (BOB_IN, MIDNIGHT - DAY)) == refused(
        "meter-number-mismatch")


@pytest.mark.parametrize("path", [DETAIL, CONSUMPTION])
def test_a_landlord_or_a_customer_who_left_gets_nothing(path: str) -> None:
    # D2: "an owner who wants his tenants' consumption must ask his tenants".
    window = None if path == DETAIL else (BOB_IN, MIDNIGHT - DAY)
    assert ask(path, "landlord", NEW_METER, window) == refused("no-occupancy")
    if path == DETAIL:
        assert ask(path, "ann", NEW_METER) == refused("no-occupancy")  # moved out
    else:
        assert ask(path, "ann", NEW_METER, window) == refused("window-outside-occupancy")


@pytest.mark.parametrize("ean", ["541448000000000012", "abc", "1" * 18])
def test_a_malformed_access_point_is_a_bad_request_naming_it(ean: str) -> None:
    for path in (f"/clearing/access-points/{ean}", f"/clearing/access-points/{ean}/consumption"):
        assert ask(path, "bob", NEW_METER, (BOB_IN, MIDNIGHT - DAY)) == refused(
            "resource-id-malformed", 400, ean)


def test_facts_without_an_access_point_are_refused_not_a_crash() -> None:
    # Fail closed: a route matched without its {ean} (a wiring error) is a 400.
    found = TABLE.lookup("GET", DETAIL)
    assert found.match is not None
    d = decide_for_customer(CALLER, found.match.route, RequestFacts({}, {}), "bob", NEW_METER,
                            FEED, NOW)
    assert d == refused("resource-id-malformed", 400, "")
