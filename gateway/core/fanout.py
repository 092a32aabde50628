"""Connect My Home fan-out (issue 5 item 5), pure.

A household request booked on the portal names several operators' works.
Each operator receives only its own connection plus the minimum shared site
data; the coordinating DSO receives the whole request; a telecom operator
never sees an energy EAN (checked again on the final part: fail closed).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.core.fields import CMH_SHARED_SITE_FIELDS
from gateway.core.identifiers import is_plain_id

_EAN_LIKE = re.compile(r"(?<![0-9])54[0-9]{16}(?![0-9])")
OPERATOR_KINDS = frozenset({"dso", "water", "telecom"})


class FanoutRejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


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
