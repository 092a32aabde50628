"""D2, D4: a customer's own access point, through the grid operator's portal.

The report: information is given "only to the customer (or someone he
mandated) known at the access point, and only for the period of this
customer's occupancy ... he will be asked for his meter number"; and "an
owner who wants his tenants' consumption must ask his tenants".

The grid operator's customer portal is a principal of the grid operator with
the role ``customer-portal`` (and no ``reader`` role: it reads nothing in its
own name). Each request acts for one customer: ``X-On-Behalf-Of`` names the
customer, ``X-Meter-Number`` carries the meter number the customer typed as
proof. The gateway allows the access point and its consumption only when

- the trusted feed has the customer's occupancy of that access point,
  ``Relation("occupancy", "<customer>/<ean>", <grid operator>, "occupant",
  moved_in, moved_out)``, held by the portal's own grid operator;
- the meter number is the meter the feed installs at that access point
  (``meter-ean``, as for pushed readings), now for the access point, during
  the window for consumption;
- the window asked for lies inside the occupancy (and, as for everyone, at
  most three years back: D4).

A landlord has no occupancy, so gets nothing. A wrong meter number is a
denial like any other, so guessing trips the repeated-denial detector (D12).
Neither header is forwarded to the shared system (gateway.core.headers).

Pure: no I/O, no aiohttp.
"""

from __future__ import annotations

from datetime import datetime

from gateway.core.decide import RequestFacts, request_window
from gateway.core.identifiers import is_plain_id, is_valid_ean, is_valid_meter_serial
from gateway.core.model import Caller, Decision, Relation
from gateway.core.push.records import ACCESS_POINT, METER_EAN, meter_ean_id
from gateway.core.relations.index import RelationIndex
from gateway.core.routes import Route

__all__ = ["CUSTOMER_PORTAL_ROLE", "METER_NUMBER", "OCCUPANCY", "OCCUPANT", "ON_BEHALF_OF",
           "PORTAL_ROUTES", "decide_for_customer", "occupancy_id"]

CUSTOMER_PORTAL_ROLE = "customer-portal"
ON_BEHALF_OF = "X-On-Behalf-Of"
METER_NUMBER = "X-Meter-Number"
OCCUPANCY = "occupancy"
OCCUPANT = "occupant"
# What a customer may read through the portal: its access point, its consumption.
PORTAL_ROUTES = frozenset({"/clearing/access-points/{ean}",
                           "/clearing/access-points/{ean}/consumption"})


def occupancy_id(customer: str, ean: str) -> str:
    """The resource id of a customer's occupancy of an access point in the feed."""
    return f"{customer}/{ean}"


def decide_for_customer(caller: Caller, route: Route, facts: RequestFacts,
                        customer: str | None, meter: str | None,
                        relations: RelationIndex, now: datetime) -> Decision:
    """The decision for a ``customer-portal`` principal acting for ``customer``
    with the meter number ``meter`` (the two headers' values, None if absent)."""
    if route.name not in PORTAL_ROUTES:
        return Decision.deny("not-a-customer-route")  # D6: the portal reads nothing else
    if customer is None or not is_plain_id(customer):
        return Decision.deny("on-behalf-of-missing", 400)
    if meter is None or not is_valid_meter_serial(meter):
        return Decision.deny("meter-number-missing", 400)
    ean = facts.params.get("ean", "")
    if not is_valid_ean(ean):
        return Decision.deny("resource-id-malformed", 400, (ean,))
    window = request_window(route, facts, now)
    if isinstance(window, Decision):
        return window
    tenant = caller.tenant.id
    occupancies = [r for r in relations.of(OCCUPANCY, occupancy_id(customer, ean))
                   if r.tenant == tenant and r.relation == OCCUPANT]
    pairings = [r for r in relations.of(METER_EAN, meter_ean_id(meter, ean))
                if r.tenant == tenant and r.relation == ACCESS_POINT]
    if window is None:
        # The access point as it is now: a current occupant, the meter there now.
        if not any(r.holds_at(now) for r in occupancies):
            # A landlord, another customer, a customer who left: nothing (D2).
            return Decision.deny("no-occupancy", resources=(ean,))
        meter_ok = any(r.holds_at(now) for r in pairings)
    else:
        start, end = window.start, min(window.end, now)  # no data after now
        if not occupancies:
            return Decision.deny("no-occupancy", resources=(ean,))
        if not any(r.covers(start, end) for r in occupancies):
            return Decision.deny("window-outside-occupancy", resources=(ean,))
        meter_ok = any(_overlaps(r, start, end) for r in pairings)
    if not meter_ok:
        # SECURITY: the meter number is the customer's proof of being at the address.
        return Decision.deny("meter-number-mismatch", resources=(ean,))
    return Decision.allow(OCCUPANT, (ean,))


def _overlaps(relation: Relation, start: datetime, end: datetime) -> bool:
    """The relation holds at some instant of ``[start, end]``."""
    return ((relation.valid_from is None or relation.valid_from <= end)
            and (relation.valid_to is None or relation.valid_to > start))
