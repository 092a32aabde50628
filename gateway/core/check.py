"""The response routing check: does every record in this answer belong to the
caller? (DESIGN.md §3; D1.)

``check_response()`` is pure. It looks at every record id the route declares,
checks it against the relation snapshot (never against anything the upstream
says about itself), and fails closed: one foreign record withholds the whole
response. Field rules then shape what a tenant of that kind may see (D2, D3,
CMH minimum site data).

A withheld answer also names the records in it that are not the caller's
(``ResponseVerdict.foreign``: resource kind, id and the instant the relation
was checked at), so their owners can be told (gateway.core.breach); the
walk runs only on that path, never on an answer that passes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from gateway.core.decide import RequestFacts, Window, request_window, resource_id
from gateway.core.fields import FIELD_RULES
from gateway.core.model import Caller, Decision
from gateway.core.relations.index import RelationIndex, parse_instant
from gateway.core.routes import RecordCheck, Route

# An upstream JSON answer with a key twice in one object: the check sees one
# value, a client that keeps the first would read the other (RFC 8259 §4
# leaves it to the parser; I-JSON, RFC 7493 §2.3, forbids it). Never forwarded.
DUPLICATE_KEY = "response-duplicate-key"

# Deny reasons that mean "data of another tenant was on its way out": counted
# in gateway_isolation_violations_total and raised as security events.
ISOLATION_REASONS = frozenset(
    {"foreign-record", "record-not-requested", "record-outside-window", "field-rule-violation",
     DUPLICATE_KEY}
)


@dataclass(frozen=True, slots=True)
class ForeignRecord:
    """A record of a withheld answer the caller holds no granting relation on:
    never its content, only what finds its owner in the feed."""

    kind: str
    resource_id: str
    at: datetime  # the instant its relation was checked at (a reading's time, or now)


class ResponseVerdict(NamedTuple):  # built per request: a tuple is cheaper
    decision: Decision
    body: Any
    changed: bool = False
    # Withheld for an isolation reason: the records that are not the caller's.
    foreign: tuple[ForeignRecord, ...] = ()


def _instant(rec: Mapping[str, Any], key: str) -> datetime | None:
    value = rec.get(key)
    if not isinstance(value, str):
        return None
    try:
        return parse_instant(value)
    except ValueError:
        return None


# Built in C: a named tuple's own constructor is a Python frame (about 1,500
# instructions a call, on every answer that passes).
_new = tuple.__new__


def _withhold(reason: str, rid: str | None = None) -> ResponseVerdict:
    return _new(ResponseVerdict, (Decision.deny(reason, 502, (rid,) if rid else ()), None,
                                  False, ()))


def check_response(
    caller: Caller,
    route: Route,
    facts: RequestFacts,
    relations: RelationIndex,
    body: Any,
    now: datetime,
) -> ResponseVerdict:
    """Check a parsed 2xx JSON body. Takes ownership of ``body`` (field rules
    may edit it in place); the returned body is what may be sent."""
    verdict = _check(caller, route, facts, relations, body, now)
    if not verdict.decision.allowed and verdict.decision.reason in ISOLATION_REASONS:
        names = route.grants.get(caller.tenant.kind, frozenset())
        found = foreign_records(caller.tenant.id, names, route, relations, body, now)
        return ResponseVerdict(verdict.decision, None, foreign=found)
    return verdict


def foreign_records(tenant: str, names: frozenset[str], route: Route,
                    relations: RelationIndex, body: Any, now: datetime
                    ) -> tuple[ForeignRecord, ...]:
    """Every record of ``body`` (as the route declares them) on which
    ``tenant`` holds none of ``names`` at the record's instant; what cannot
    be read as a record is skipped (it names no resource)."""
    found: list[ForeignRecord] = []
    for rc in route.records:
        records = _records_of(rc, body)
        if records is None:
            continue
        for rec in records:
            if not isinstance(rec, Mapping) or not isinstance(rid := rec.get(rc.id_field), str):
                continue
            at = now
            if rc.at_field is not None:
                parsed = _instant(rec, rc.at_field)
                if parsed is None:
                    continue
                at = parsed
            if relations.holds(rc.kind, rid, tenant, names, at) is None:
                found.append(ForeignRecord(rc.kind, rid, at))
    return tuple(found)


def _records_of(rc: RecordCheck, body: Any) -> list[Any] | None:
    """The records ``rc`` declares in ``body`` (the body itself for a single
    record), or None when they are not a list."""
    if rc.items is None:
        return [body]
    records = body.get(rc.items) if isinstance(body, Mapping) else None
    return records if isinstance(records, list) else None


def _check(
    caller: Caller,
    route: Route,
    facts: RequestFacts,
    relations: RelationIndex,
    body: Any,
    now: datetime,
) -> ResponseVerdict:
    names = route.grants.get(caller.tenant.kind)
    if names is None:  # decide() would have refused; fail closed anyway
        return _withhold("tenant-kind-not-permitted")
    window = request_window(route, facts, now)
    if isinstance(window, Decision):
        return _withhold("window-invalid")
    requested = resource_id(route, facts)
    tenant = caller.tenant.id
    holds = relations.holds
    seen: list[str] = []
    for rc in route.records:
        records = _records_of(rc, body)
        if records is None:
            return _withhold("response-malformed")
        kind, id_field, at_field = rc.kind, rc.id_field, rc.at_field
        in_window = window.contains if isinstance(window, Window) \
            and rc.window_field is not None else None
        window_field = rc.window_field or ""  # read only where in_window is set
        # A reading's own instant is often its window's stamp too: read once.
        stamp_is_at = rc.window_field == at_field
        for rec in records:
            # A parsed answer's objects are dicts: the ABC's check only for others.
            if type(rec) is not dict and not isinstance(rec, Mapping):
                return _withhold("response-malformed")
            rid = rec.get(id_field)
            if not isinstance(rid, str):
                return _withhold("response-malformed")
            if rc.same_as_request and rid != requested:
                return _withhold("record-not-requested", rid)
            at = now
            if at_field is not None:
                parsed = _instant(rec, at_field)
                if parsed is None:
                    return _withhold("response-malformed", rid)
                at = parsed
            if in_window is not None:
                stamp = at if stamp_is_at else _instant(rec, window_field)
                if stamp is None:
                    return _withhold("response-malformed", rid)
                if not in_window(stamp):
                    # D2/D4: nothing outside the window that was decided on.
                    return _withhold("record-outside-window", rid)
            if holds(kind, rid, tenant, names, at) is None:
                # SECURITY: D1. One foreign record withholds the whole answer.
                return _withhold("foreign-record", rid)
            seen.append(rid)
    changed = False
    for rule_name in route.field_rules:
        outcome = FIELD_RULES[rule_name](caller, body, relations, now)
        if outcome is None:
            return _withhold("field-rule-violation")
        changed = changed or outcome
    return _new(ResponseVerdict, (Decision.allow("checked", tuple(seen)), body, changed, ()))
