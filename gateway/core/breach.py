"""Breach notification to the affected tenant (D1, D10, D12): when the
routing check withholds an answer because it held another tenant's records,
the *owner* of those records is told, not only the operator's SOC.

Pure: the withheld records (:class:`gateway.core.check.ForeignRecord`) and
the trusted relation feed in, one :class:`BreachNotice` per owner out. The
owner of a record is the tenant holding its kind's owning relation
(:data:`OWNER_RELATIONS`) in the feed at the instant the record was checked
at, never what the upstream's answer says. The notice names the incident,
its time, the shared system, the route template, how many of the owner's
records were in the answer and which tenant asked: never a record, never a
resource id (D10: a trace of the sending, not of the data).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.core.check import ForeignRecord
from gateway.core.relations.index import RelationIndex

# The outbox part kind and the document's "type".
KIND = "breach-notification"

# Resource kind -> the relation that makes a tenant the owner of its records:
# a meter's owner (D5: a water meter read through an electricity meter is the
# water company's), an access point's grid operator, a Connect My Home
# request's coordinating DSO and a connection's operator, a client company's
# tickets, assets and employees on the IT platform.
OWNER_RELATIONS: Mapping[str, str] = {
    "meter": "owner",
    "ean": "grid-operator",
    "cmh-request": "coordinator",
    "cmh-connection": "operator",
    "ticket": "owner",
    "asset": "owner",
    "person": "owner",
}


@dataclass(frozen=True, slots=True)
class BreachNotice:
    """What one owner is told about one withheld answer."""

    incident: str  # the withheld request's incident id (its audit and SOC events)
    owner: str
    at: datetime
    shared_system: str  # the upstream
    route: str  # the route template, never the path
    records: int  # how many of the owner's records the answer held
    requested_by: str  # the tenant that asked
    reason: str  # the routing check's reason code
    # "withheld": the routing check kept the answer from the requester;
    # "served": it reached the requester (an isolation canary found it, D1).
    outcome: str = "withheld"

    @property
    def key(self) -> str:
        """One notice per incident and owner: its idempotency key."""
        return f"{self.incident}/{self.owner}"

    def document(self, security_contact: str | None) -> dict[str, Any]:
        """The notification as delivered and as ``GET /notifications`` lists it."""
        return {
            "type": KIND,
            "incident": self.incident,
            "time": self.at.astimezone(UTC).isoformat(),
            "owner": self.owner,
            "shared_system": self.shared_system,
            "route": self.route,
            "records": self.records,
            "requested_by": self.requested_by,
            "reason": self.reason,
            "outcome": self.outcome,
            "security_contact": security_contact,
        }


def owners_of(foreign: Iterable[ForeignRecord], relations: RelationIndex,
              requester: str) -> tuple[dict[str, int], int]:
    """``({owner: records}, unowned)``: the feed's owners of the foreign
    records at each record's instant, the requester never among them (it is
    told nothing of records it was refused). A record with several owners
    counts for each; one with none, or of a kind without an owning
    relation, is counted as unowned."""
    counts: dict[str, int] = {}
    unowned = 0
    for rec in foreign:
        relation = OWNER_RELATIONS.get(rec.kind)
        holders = (set() if relation is None
                   else relations.holders(rec.kind, rec.resource_id, relation, rec.at))
        # SECURITY: the requester is never notified of another tenant's records.
        holders.discard(requester)
        if not holders:
            unowned += 1
        for owner in holders:
            counts[owner] = counts.get(owner, 0) + 1
    return counts, unowned


def breach_notices(*, incident: str, at: datetime, shared_system: str, route: str,
                   requested_by: str, reason: str, foreign: Iterable[ForeignRecord],
                   relations: RelationIndex) -> tuple[tuple[BreachNotice, ...], int]:
    """One notice per owner of the foreign records (sorted by owner), and
    how many records had no owner to tell."""
    counts, unowned = owners_of(foreign, relations, requested_by)
    notices = tuple(BreachNotice(incident, owner, at, shared_system, route, n, requested_by,
                                 reason)
                    for owner, n in sorted(counts.items()))
    return notices, unowned
