"""Field rules: what a tenant of a given kind may see inside a record that is
otherwise its own. Each rule edits the freshly parsed body in place and
returns True if it changed something, False if not, and None to withhold the
whole response (a shape it cannot make safe).
"""

from __future__ import annotations

import re
from collections.abc import Callable, MutableMapping
from datetime import datetime
from typing import Any

from gateway.core.model import Caller
from gateway.core.occupancy import CUSTOMER_PORTAL_ROLE
from gateway.core.relations.index import RelationIndex, parse_instant

FieldRule = Callable[[Caller, Any, RelationIndex, datetime], "bool | None"]

# An 18-digit number starting with 54: a Belgian EAN in any field.
_EAN_LIKE = re.compile(r"(?<![0-9])54[0-9]{16}(?![0-9])")
# Site data every operator of a portal request may see (the minimum).
CMH_SHARED_SITE_FIELDS = frozenset({"street", "postal_code", "city", "requested_date", "household"})


def _records(body: Any, key: str) -> list[MutableMapping[str, Any]] | None:
    if isinstance(body, MutableMapping) and key in body:
        items = body[key]
        if isinstance(items, list) and all(isinstance(i, MutableMapping) for i in items):
            return items
        return None
    if isinstance(body, MutableMapping):
        return [body]
    return None


# D3: the supplier that started a drop or a prepayment meter installation on
# an EAN, a relation of the access register's feed, valid while it is under way.
DROP_INITIATOR = "drop-initiator"


def clearing_restricted(caller: Caller, body: Any, relations: RelationIndex, now: datetime
                        ) -> bool | None:
    """D3: a new supplier must not learn that a drop or a prepayment meter
    installation is in progress. Only the grid operator and the supplier that
    initiated it see the ``restricted`` block. Both come from the trusted
    relation feed (``grid-operator``, ``drop-initiator`` with its validity
    window), never from the block itself: the clearing answer's ``initiator``
    does not vouch for itself (DESIGN.md §4)."""
    records = _records(body, "access_points")
    if records is None:
        return None
    tenant = caller.tenant.id
    changed = False
    for rec in records:
        if rec.get("restricted") is None:
            continue
        ean = rec.get("ean")
        if isinstance(ean, str):
            entitled = relations.holders("ean", ean, "grid-operator", now) \
                | relations.holders("ean", ean, DROP_INITIATOR, now)
            if tenant in entitled:
                continue
        # SECURITY: D3, fail closed: anyone else, or an answer without a usable EAN.
        del rec["restricted"]
        changed = True
    return changed


def clearing_contracts(caller: Caller, body: Any, relations: RelationIndex, now: datetime
                       ) -> bool | None:
    """D2: a supplier never sees customers active with another supplier. The
    grid operator sees every contract; a supplier only its own; a welfare
    centre (mandate, D4) only the contracts running now."""
    records = _records(body, "access_points")
    if records is None:
        return None
    kind = caller.tenant.kind
    if kind == "dso":
        return False
    changed = False
    for rec in records:
        contracts = rec.get("contracts")
        if contracts is None:
            continue
        if not isinstance(contracts, list):
            return None
        kept = []
        for c in contracts:
            if not isinstance(c, MutableMapping):
                return None
            if kind == "supplier":
                keep = c.get("supplier") == caller.tenant.id
            else:
                try:
                    start = parse_instant(c.get("valid_from"))
                    end = parse_instant(c.get("valid_to"))
                except (TypeError, ValueError):
                    return None
                keep = (start is None or start <= now) and (end is None or now < end)
            if keep:
                kept.append(c)
        if len(kept) != len(contracts):
            rec["contracts"] = kept
            changed = True
    return changed


# D2: what a supplier reads of an access point is what the market messages
# carry: the access point itself (EAN, energy, grid operator, region, the
# address that identifies it, the meter's serial, type and whether it
# communicates), its own contracts (clearing.contracts), the restricted block
# only as D3 allows (clearing.restricted), and the customer's data only where
# the supplier supplied them itself ("the customer data a supplier can consult
# are the data supplied by the suppliers themselves via market messages").
# Any other member, present or future, is removed: an allow-list, not a deny-list.
SUPPLIER_ACCESS_POINT_FIELDS = frozenset({
    "ean", "energy", "grid_operator", "grid_operator_gln", "region", "address", "meter",
    "contracts", "restricted", "customer"})
SUPPLIER_METER_FIELDS = frozenset({"serial", "type", "communicating"})


def clearing_supplier_view(caller: Caller, body: Any, relations: RelationIndex,
                           now: datetime) -> bool | None:
    """D2: a supplier sees of an access point what the market messages carry
    (:data:`SUPPLIER_ACCESS_POINT_FIELDS`), and a customer block only when its
    ``supplied_by`` is the supplier itself. Other tenant kinds: unchanged."""
    if caller.tenant.kind != "supplier":
        return False
    records = _records(body, "access_points")
    if records is None:
        return None
    tenant = caller.tenant.id
    changed = False
    for rec in records:
        changed = _access_point_view(rec, SUPPLIER_ACCESS_POINT_FIELDS) or changed
        customer = rec.get("customer")
        if "customer" in rec and not (isinstance(customer, MutableMapping)
                                      and customer.get("supplied_by") == tenant):
            # SECURITY: D2, fail closed: no provenance, or another supplier's data.
            del rec["customer"]
            changed = True
    return changed


def _access_point_view(rec: MutableMapping[str, Any], fields: frozenset[str]) -> bool:
    """Keep ``fields`` of an access-point record and the meter's
    :data:`SUPPLIER_METER_FIELDS` (a meter of another shape is removed);
    True if something was removed."""
    changed = False
    for key in [k for k in rec if k not in fields]:
        del rec[key]
        changed = True
    meter = rec.get("meter")
    if isinstance(meter, MutableMapping):
        for key in [k for k in meter if k not in SUPPLIER_METER_FIELDS]:
            del meter[key]
            changed = True
    elif "meter" in rec and meter is not None:
        del rec["meter"]  # a shape the rule does not know: not shown
        changed = True
    return changed


# D2, D4: what a customer reads of its own access point through the grid
# operator's portal (gateway.core.occupancy): the access point, its meter and
# its own customer block; no contracts (a former occupant's would show) and no
# restricted block (market processes between suppliers).
CUSTOMER_ACCESS_POINT_FIELDS = frozenset({
    "ean", "energy", "grid_operator", "region", "address", "meter", "customer"})


def clearing_customer_view(caller: Caller, body: Any, relations: RelationIndex,
                           now: datetime) -> bool | None:
    """For a ``customer-portal`` principal only: :data:`CUSTOMER_ACCESS_POINT_FIELDS`
    of its access point, the meter's serial, type and whether it communicates."""
    if CUSTOMER_PORTAL_ROLE not in caller.principal.roles:
        return False
    records = _records(body, "access_points")
    if records is None:
        return None
    changed = False
    for rec in records:
        changed = _access_point_view(rec, CUSTOMER_ACCESS_POINT_FIELDS) or changed
    return changed


def cmh_own_connections(caller: Caller, body: Any, relations: RelationIndex, now: datetime
                        ) -> bool | None:
    """Connect My Home: each operator sees its own connection plus the minimum
    shared site data; the coordinating DSO sees the whole request. Telecom
    operators never see an energy EAN, checked again on the final record."""
    records = _records(body, "requests")
    if records is None:
        return None
    tenant = caller.tenant.id
    changed = False
    for rec in records:
        rid = str(rec.get("id"))
        if tenant in relations.holders("cmh-request", rid, "coordinator", now):
            continue
        conns = rec.get("connections")
        if not isinstance(conns, list):
            return None
        own = [c for c in conns if isinstance(c, MutableMapping) and c.get("operator") == tenant]
        if len(own) != len(conns):
            rec["connections"] = own
            changed = True
        site = rec.get("site")
        if isinstance(site, MutableMapping):
            for key in [k for k in site if k not in CMH_SHARED_SITE_FIELDS]:
                del site[key]
                changed = True
        for key in [k for k in rec if k not in ("id", "coordinator", "site", "connections",
                                                "created", "status")]:
            del rec[key]
            changed = True
        if caller.tenant.kind == "telecom" and _EAN_LIKE.search(repr(rec)):
            return None  # SECURITY: fail closed rather than show an energy EAN
    return changed


FIELD_RULES: dict[str, FieldRule] = {
    "clearing.restricted": clearing_restricted,
    "clearing.contracts": clearing_contracts,
    "clearing.supplier-view": clearing_supplier_view,
    "clearing.customer-view": clearing_customer_view,
    "cmh.own-connections": cmh_own_connections,
}
