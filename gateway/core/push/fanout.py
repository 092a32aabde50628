"""Connect My Home fan-out (D1: each operator its own connection), pure.

A household request booked on the portal names several operators' works.
Each operator receives only its own connection plus the minimum shared site
data; the coordinating DSO receives the whole request; a telecom operator
never sees an energy EAN (checked again on the final part: fail closed).

Before any part is made, :func:`booking_quarantine` checks the booking against
the trusted relation feed, as every pushed HES reading is (an upstream never
vouches for itself, D1): the request's coordinator and each connection's
operator must be the ones the feed holds for that request now. Otherwise the
whole booking is quarantined, delivered to nobody, with one reason:

- ``unknown-request``       the feed holds no coordinator for the request id;
- ``coordinator-mismatch``  the booking names another coordinator than the feed;
- ``operator-mismatch``     a connection the feed does not hold for this request,
                            or addressed to another operator than the feed's.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.core.fields import CMH_SHARED_SITE_FIELDS
from gateway.core.identifiers import is_plain_id
from gateway.core.rejected import Rejected
from gateway.core.relations.index import RelationIndex

_EAN_LIKE = re.compile(r"(?<![0-9])54[0-9]{16}(?![0-9])")
OPERATOR_KINDS = frozenset({"dso", "water", "telecom"})
CMH_QUARANTINE_REASONS = frozenset({"unknown-request", "coordinator-mismatch",
                                    "operator-mismatch"})
# Feed relations: ("cmh-request", id) -> coordinator; a connection of a request:
# (CMH_REQUEST_CONNECTION, request_connection_id(request, connection)) -> operator.
CMH_REQUEST = "cmh-request"
CMH_REQUEST_CONNECTION = "cmh-request-connection"


def request_connection_id(request_id: str, connection_id: str) -> str:
    return f"{request_id}/{connection_id}"


def booking_quarantine(request: Mapping[str, Any], relations: RelationIndex,
                       now: datetime) -> tuple[str, str | None] | None:
    """``(reason, connection id or None)`` when the booking (already shaped by
    :func:`split_request`) does not match the feed; None when it does."""
    rid = str(request["id"])
    coordinators = relations.holders(CMH_REQUEST, rid, "coordinator", now)
    if not coordinators:
        return ("unknown-request", None)
    # SECURITY: D1. The feed names the coordinator; the booking only repeats it.
    if coordinators != {request["coordinator"]}:
        return ("coordinator-mismatch", None)
    for conn in request["connections"]:
        cid = str(conn["id"])
        operators = relations.holders(CMH_REQUEST_CONNECTION, request_connection_id(rid, cid),
                                      "operator", now)
        if operators != {conn["operator"]}:
            return ("operator-mismatch", cid)
    return None


class FanoutRejected(Rejected):
    """A portal booking that cannot be split per tenant: 400, or 422 for an
    EAN on a telecom operator's part (well-formed, but not what it may carry)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail, status=422 if reason == "ean-for-telecom" else 400)


@dataclass(frozen=True, slots=True)
class Fanout:
    request_id: str
    coordinator: str
    parts: Mapping[str, dict[str, Any]]  # tenant -> what it receives


def split_request(request: Any, tenant_kinds: Mapping[str, str],
                  coordinators: frozenset[str]) -> Fanout:
    """One part per operator (own connections + minimum site), the whole
    request for the coordinator. ``tenant_kinds`` maps declared tenants to
    their kind; ``coordinators`` are the DSOs that coordinate the portal."""
    if not isinstance(request, Mapping):
        raise FanoutRejected("request-not-object", "the request must be a JSON object")
    rid, coordinator = request.get("id"), request.get("coordinator")
    conns, site = request.get("connections"), request.get("site")
    if not isinstance(rid, str) or not is_plain_id(rid):
        raise FanoutRejected("bad-request-id", "id must be a plain identifier")
    if coordinator not in coordinators:
        raise FanoutRejected("bad-coordinator", "the coordinator must be a coordinating DSO")
    if not isinstance(conns, list) or not conns or not isinstance(site, Mapping):
        raise FanoutRejected("bad-shape", "a request has a site and at least one connection")
    own: dict[str, list[dict[str, Any]]] = {}
    for conn in conns:
        op = conn.get("operator") if isinstance(conn, Mapping) else None
        if not isinstance(op, str) or tenant_kinds.get(op) not in OPERATOR_KINDS:
            raise FanoutRejected("bad-operator", f"unknown operator {op!r}")
        if not isinstance(conn.get("id"), str):
            raise FanoutRejected("bad-shape", "every connection has an id")
        own.setdefault(op, []).append(copy.deepcopy(dict(conn)))
    minimal_site = {k: copy.deepcopy(v) for k, v in site.items() if k in CMH_SHARED_SITE_FIELDS}
    parts: dict[str, dict[str, Any]] = {}
    for op, connections in own.items():
        if op == coordinator:
            continue
        part = {"id": rid, "coordinator": coordinator, "site": minimal_site,
                "connections": connections}
        if tenant_kinds[op] == "telecom" and _EAN_LIKE.search(repr(part)):
            # SECURITY: an energy EAN would reach a telecom operator: refuse.
            raise FanoutRejected("ean-for-telecom", f"an EAN would reach {op}")
        parts[op] = copy.deepcopy(part)
    parts[str(coordinator)] = copy.deepcopy(dict(request))
    return Fanout(rid, str(coordinator), parts)
