"""D5: remote operations on a smart meter, judged by the trusted inventory.

The relation feed says which meters are in airplane mode (communication
disabled at the customer's request): ``Relation("meter", serial, "*",
"airplane-mode", from, to)``. The gateway refuses every remote operation on
such a meter itself, whatever the HES would do, "with the exception of the
prepayment function". Leaving airplane mode is the customer's decision: it
needs the customer's consent in the feed, ``Relation("meter", serial, "*",
"airplane-mode-consent", from, to)``, valid at the time of the request. Until
the feed says the meter communicates again, every other operation stays
refused (the HES switching it back is not enough).

Pure: no I/O, no aiohttp.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from gateway.core.model import Decision
from gateway.core.relations.index import RelationIndex

__all__ = ["AIRPLANE_CONSENT", "AIRPLANE_MODE", "LEAVE_AIRPLANE_MODE", "PREPAYMENT_OPERATIONS",
           "check_meter_operation"]

AIRPLANE_MODE = "airplane-mode"  # Relation("meter", serial, "*", AIRPLANE_MODE, from, to)
AIRPLANE_CONSENT = "airplane-mode-consent"  # the customer agreed to leave airplane mode
LEAVE_AIRPLANE_MODE = "airplane-mode-off"
# The prepayment function: a budget meter's credit, allowed in airplane mode.
PREPAYMENT_OPERATIONS = frozenset({"prepayment-top-up", "prepayment-emergency-credit"})

_IN_AIRPLANE_MODE = "meter-in-airplane-mode"
_NO_CONSENT = "airplane-mode-consent-missing"


def check_meter_operation(serial: str, body: Any, relations: RelationIndex,
                          now: datetime) -> Decision | None:
    """None when the operation named in ``body`` may go to the HES; else the
    refusal (409: the meter's state forbids it now)."""
    if not relations.holders("meter", serial, AIRPLANE_MODE, now):
        return None
    operation = body.get("operation") if isinstance(body, Mapping) else None
    if operation in PREPAYMENT_OPERATIONS:
        return None
    if operation == LEAVE_AIRPLANE_MODE:
        if relations.holders("meter", serial, AIRPLANE_CONSENT, now):
            return None
        return Decision.deny(_NO_CONSENT, 409, (serial,))
    return Decision.deny(_IN_AIRPLANE_MODE, 409, (serial,))
