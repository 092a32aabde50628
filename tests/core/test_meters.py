"""D5: remote operations on a meter in airplane mode, judged by the feed
(gateway.core.meters), and the three-year bound on a meter's readings."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gateway.core.meters import (
    AIRPLANE_CONSENT,
    AIRPLANE_MODE,
    LEAVE_AIRPLANE_MODE,
    PREPAYMENT_OPERATIONS,
    check_meter_operation,
)
from gateway.core.model import Relation
from gateway.core.relations.index import RelationIndex

from .conftest import DAY, METER_ORES, NOW
from .test_decide import ask

QUIET = "1SAG0000000077"  # in airplane mode, no consent
CONSENTED = "1SAG0000000078"  # in airplane mode, the customer agreed to leave it
WAS_QUIET = "1SAG0000000079"  # airplane mode ended yesterday
CONSENT_EXPIRED = "1SAG0000000080"

FEED = RelationIndex([
    Relation("meter", METER_ORES, "ores", "owner"),
    *(Relation("meter", m, "ores", "owner") for m in (QUIET, CONSENTED, WAS_QUIET,
                                                       CONSENT_EXPIRED)),
    Relation("meter", QUIET, "*", AIRPLANE_MODE),
    Relation("meter", CONSENTED, "*", AIRPLANE_MODE),
    Relation("meter", CONSENTED, "*", AIRPLANE_CONSENT, NOW - DAY, NOW + DAY),
    Relation("meter", WAS_QUIET, "*", AIRPLANE_MODE, NOW - 30 * DAY, NOW - DAY),
    Relation("meter", CONSENT_EXPIRED, "*", AIRPLANE_MODE),
    Relation("meter", CONSENT_EXPIRED, "*", AIRPLANE_CONSENT, NOW - 9 * DAY, NOW - 2 * DAY),
])


def verdict(serial: str, operation: object) -> tuple[int, str] | None:
    refused = check_meter_operation(serial, {"operation": operation}, FEED, NOW)
    if refused is None:
        return None
    assert refused.resources == (serial,)  # the meter refused goes to the audit event
    return (refused.status, refused.reason)


@pytest.mark.parametrize("operation", ["connect", "disconnect", "set-power-limit",
                                       "airplane-mode-on", "something-else", None, 7])
def test_no_remote_operation_on_a_meter_in_airplane_mode(operation: object) -> None:
    assert verdict(QUIET, operation) == (409, "meter-in-airplane-mode")
    assert verdict(CONSENTED, operation) == (409, "meter-in-airplane-mode")


@pytest.mark.parametrize("operation", sorted(PREPAYMENT_OPERATIONS))
def test_the_prepayment_function_works_in_airplane_mode(operation: str) -> None:
    """"With the exception of the prepayment function"."""
    assert verdict(QUIET, operation) is None


def test_leaving_airplane_mode_needs_the_customer_s_consent_in_the_feed() -> None:
    assert verdict(QUIET, LEAVE_AIRPLANE_MODE) == (409, "airplane-mode-consent-missing")
    assert verdict(CONSENT_EXPIRED, LEAVE_AIRPLANE_MODE) == (409,
                                                             "airplane-mode-consent-missing")
    assert verdict(CONSENTED, LEAVE_AIRPLANE_MODE) is None


@pytest.mark.parametrize("operation", ["disconnect", LEAVE_AIRPLANE_MODE, "connect"])
def test_a_communicating_meter_takes_any_operation(operation: str) -> None:
    # The HES judges the operation itself; the gateway refuses only what the feed forbids.
    assert verdict(METER_ORES, operation) is None
    assert verdict(WAS_QUIET, operation) is None


def test_a_body_that_is_not_an_object_is_no_prepayment() -> None:
    assert check_meter_operation(QUIET, ["prepayment-top-up"], FEED, NOW) is not None
    assert check_meter_operation(QUIET, None, FEED, NOW) is not None


def test_a_meter_s_readings_go_back_three_years_at_most() -> None:
    """D4 and D5: the three-year bound holds for the HES's readings too."""
    path = f"/hes/meters/{METER_ORES}/readings"
    recent = {"date": (NOW - timedelta(days=3 * 365 - 1)).date().isoformat()}
    too_old = {"date": (NOW - timedelta(days=4 * 365)).date().isoformat()}
    assert ask("ores", "dso", "GET", path, FEED, recent).allowed
    d = ask("ores", "dso", "GET", path, FEED, too_old)
    assert not d.allowed and d.reason == "history-beyond-three-years" and d.status == 403
