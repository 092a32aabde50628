"""Isolation canaries (D1, D12): synthetic resources the relation feed marks,
each owned by one tenant, that the gateway's own prober asks for as every
tenant's canary principal. An owner must reach its canary; any other tenant
must be refused. A foreign canary served is a breach of D1 found before a
real record leaks.

Pure: the feed in, the canaries and the verdicts out. The prober's I/O is in
:mod:`gateway.canary`.

**The feed's fields.** A canary is a resource of a kind the prober knows
(:data:`PROBE_ROUTES`) with, besides the owning relation its kind always has
(:data:`gateway.core.breach.OWNER_RELATIONS`), one more tuple
``(kind, resource id, owner, "canary")``. In production each shared
system's operator seeds the synthetic record in its system and the tuple in
the feed; in the demo the dataset does both.

**The canary principal.** Every tenant has one, ``<tenant>/service/canary``
(role ``canary``), made by the gateway (never declared in a tenant file).
It reads canary resources only: :func:`decide_canary` refuses any other
resource before the ordinary :func:`gateway.core.decide.decide` runs, so a
canary certificate that leaked opens no real record. ``decide()`` itself is
unchanged: it refuses the canary role (no ``reader``), and only the
pipeline's dispatch on the role sends a canary request here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from gateway.core.decide import DATA_ROLE, RequestFacts, decide, resource_id
from gateway.core.model import Caller, Decision, Principal, Relation
from gateway.core.relations.index import RelationIndex
from gateway.core.routes import Route

CANARY_RELATION = "canary"
CANARY_ROLE = "canary"
CANARY_KIND = "service"
CANARY_NAME = "canary"

# Resource kind -> the route the prober reads a canary of that kind through
# (one record by its id in the path, so the response check compares it with
# the request), and the record's id field.
PROBE_ROUTES: Mapping[str, tuple[str, str]] = {
    "meter": ("/hes/meters/{serial}", "serial"),
    "ean": ("/clearing/access-points/{ean}", "ean"),
    "cmh-request": ("/cmh/requests/{request_id}", "id"),
    "ticket": ("/itsm/tickets/{ticket_id}", "id"),
}

# What one probe found (gateway_canary_probes_total{result}):
OK = "pass"  # the owner got its canary, or another tenant was refused
BREACH = "breach"  # another tenant was served the canary (D1 broken)
WITHHELD = "withheld"  # the routing check withheld a foreign record (caught)
OWNER_UNREACHABLE = "owner-unreachable"  # the owner did not get its own canary
ERROR = "error"  # no answer at all (connection, timeout)
RESULTS = (OK, BREACH, WITHHELD, OWNER_UNREACHABLE, ERROR)
ISOLATION_PROBLEM = "urn:shared-grid-gateway:problem:isolation-violation"

_DENY_NOT_CANARY = Decision.deny("canary-principal-not-a-canary")
_DENY_LIST = Decision.deny("canary-principal-list")


@dataclass(frozen=True, slots=True, order=True)
class Canary:
    kind: str
    resource_id: str
    owner: str

    @property
    def route(self) -> str:
        """The route template it is read through (a metric-safe label)."""
        return PROBE_ROUTES[self.kind][0]

    @property
    def upstream(self) -> str:
        return self.route.split("/")[1]

    @property
    def path(self) -> str:
        return self.route[:self.route.index("{")] + self.resource_id

    @property
    def id_field(self) -> str:
        return PROBE_ROUTES[self.kind][1]


def canary_principal(tenant: str) -> Principal:
    """The canary principal of ``tenant``: role ``canary`` only (no ``reader``)."""
    return Principal(tenant, CANARY_KIND, CANARY_NAME, frozenset({CANARY_ROLE}))


def canaries(relations: Iterable[Relation]) -> tuple[Canary, ...]:
    """Every canary the feed marks, of a kind the prober can read, sorted."""
    return tuple(sorted({Canary(r.kind, r.resource_id, r.tenant) for r in relations
                         if r.relation == CANARY_RELATION and r.kind in PROBE_ROUTES}))


def decide_canary(caller: Caller, route: Route, facts: RequestFacts,
                  relations: RelationIndex, now: datetime) -> Decision:
    """The request decision for a canary principal: a GET of one resource
    the feed marks as a canary (of any owner: the ordinary decision then
    refuses another tenant's), decided as its tenant's reader would be."""
    # SECURITY: D1, D6. A canary principal never lists and never writes.
    if route.resource is None or route.method != "GET":
        return _DENY_LIST
    rid = resource_id(route, facts)
    if rid is None or not relations.holders(route.resource.kind, rid, CANARY_RELATION, now):
        # SECURITY: D1. A real record is never a canary principal's to read.
        return _DENY_NOT_CANARY
    reader = replace(caller.principal, roles=frozenset({DATA_ROLE}))
    return decide(replace(caller, principal=reader), route, facts, relations, now)


def probe_result(canary: Canary, prober: str, status: int | None, body: bytes) -> str:
    """What one answer means: the owner must get its canary (200, the same
    record); another tenant must not. ``status`` None: no answer."""
    if status is None:
        return ERROR
    if prober == canary.owner:
        if 200 <= status < 300 and _holds(canary, body):
            return OK
        return WITHHELD if _withheld(status, body) else OWNER_UNREACHABLE
    if 200 <= status < 300 and _holds(canary, body):
        return BREACH  # SECURITY: D1 broken, the foreign canary was served
    return WITHHELD if _withheld(status, body) else OK


def _holds(canary: Canary, body: bytes) -> bool:
    """Whether the answer carries the canary record (by its id)."""
    try:
        doc: Any = json.loads(body)
    except ValueError:
        return canary.resource_id.encode() in body  # unparsed: any trace counts
    return isinstance(doc, dict) and doc.get(canary.id_field) == canary.resource_id


def _withheld(status: int, body: bytes) -> bool:
    """The routing check withheld the answer (an isolation violation caught)."""
    if status != 502:
        return False
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("type") == ISOLATION_PROBLEM
