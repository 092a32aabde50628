"""The request decision: may this tenant act on this resource now?

``decide()`` is pure: frozen inputs plus an injected ``now``, no I/O. It
enforces D1 (one operator never touches another's resource), D2 (a supplier
only while its contract is valid, and only data inside the contract window),
D4 (consumption history at most three years back, mandates) and D6 (role
based rights, need to know).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from gateway.core.identifiers import is_valid_resource_id
from gateway.core.model import Caller, Decision, Verdict
from gateway.core.relations.index import RelationIndex, parse_instant
from gateway.core.routes import Route

# D4: consumption history reaches back at most three years.
HISTORY_LIMIT = timedelta(days=3 * 365 + 1)
ONE_DAY = timedelta(days=1)
DATA_ROLE = "reader"


# D8: why a sensitive consultation happens; the reference ties it to a case.
PURPOSES = frozenset({"customer-request", "billing-dispute", "fraud-investigation",
                      "social-assistance", "legal-obligation", "hr-administration"})
_JUSTIFICATION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{2,63}")


def check_purpose(purpose: str | None, justification: str | None) -> Decision | None:
    """None when a declared purpose and justification reference are valid."""
    if purpose is None or justification is None:
        return Decision.deny("purpose-required", 400)
    if purpose not in PURPOSES:
        return Decision.deny("purpose-unknown", 400)
    if not _JUSTIFICATION.fullmatch(justification):
        return Decision.deny("justification-malformed", 400)
    return None


class RequestFacts(NamedTuple):  # built per request: a tuple is cheaper
    """What the decision may look at, already extracted from the request."""

    params: Mapping[str, str]
    query: Mapping[str, str]
    body: Any = None


@dataclass(frozen=True, slots=True)
class Window:
    """A data window ``[start, end)``."""

    start: datetime
    end: datetime

    def contains(self, at: datetime) -> bool:
        return self.start <= at < self.end


def resource_id(route: Route, facts: RequestFacts) -> str | None:
    ref = route.resource
    if ref is None:
        return None
    if ref.source == "path":
        return facts.params.get(ref.name)
    if ref.source == "query":
        return facts.query.get(ref.name)
    if isinstance(facts.body, Mapping):
        value = facts.body.get(ref.name)
        return value if isinstance(value, str) else None
    return None


def request_window(route: Route, facts: RequestFacts, now: datetime) -> Window | Decision | None:
    """The data window the request asks for, or a deny explaining why not."""
    if route.window is None:
        return None
    try:
        if route.window == "date":
            day = parse_instant(facts.query.get("date"))
            if day is None:
                return Decision.deny("window-missing", 400)
            start, end = day, day + ONE_DAY
        else:
            start_at = parse_instant(facts.query.get("from"))
            to_at = parse_instant(facts.query.get("to"))
            if start_at is None or to_at is None:
                return Decision.deny("window-missing", 400)
            start, end = start_at, to_at + ONE_DAY  # "to" is an inclusive day
    except ValueError:
        return Decision.deny("window-malformed", 400)
    if end <= start:
        return Decision.deny("window-inverted", 400)
    if start > now:
        return Decision.deny("window-in-future", 400)
    if start < now - HISTORY_LIMIT:
        # D4: three years at most, of consumption and of a meter's readings alike.
        return Decision.deny("history-beyond-three-years")
    return Window(start, end)


# Built once: the answers decide() gives most (a Decision is an immutable tuple).
_DENY_ROLE = Decision.deny("missing-role")
_DENY_KIND = Decision.deny("tenant-kind-not-permitted")
_DENY_MEMBER = Decision.deny("not-a-member")
_DENY_ID_MISSING = Decision.deny("resource-id-missing", 400)
_ALLOW_LIST = Decision.allow("list")
_ALLOW = Verdict.ALLOW
_new_decision = tuple.__new__  # Decision(...) without the named tuple's Python __new__


def decide(
    caller: Caller,
    route: Route,
    facts: RequestFacts,
    relations: RelationIndex,
    now: datetime,
) -> Decision:
    principal = caller.principal
    if DATA_ROLE not in principal.roles:
        # D6: admin principals (security team, auditors) have no data access.
        return _DENY_ROLE
    tenant = caller.tenant
    names = route.grants.get(tenant.kind)
    if names is None:
        # D6: this kind of tenant has no business on this route at all.
        return _DENY_KIND
    member_of = route.member_of
    if member_of is not None and member_of not in tenant.memberships:
        return _DENY_MEMBER  # D6: e.g. SWDE is not in the HES consortium
    required = route.required_role
    if required is not None and required not in principal.roles:
        return _DENY_ROLE  # D6: role-based rights
    fast = route.path_resource
    if fast is None:
        return _decide_general(caller, route, facts, names, relations, now)
    # A resource named in the path, no data window: most requests (the per-request
    # decide() budget). The same checks as _decide_general, in the same order.
    kind, param, id_syntax = fast
    rid = facts.params.get(param)
    if rid is None:
        return _DENY_ID_MISSING
    if not id_syntax(rid):
        return Decision.deny("resource-id-malformed", 400, (rid,))
    relation = relations.holds(kind, rid, tenant.id, names, now)
    if relation is None:
        return Decision.deny("no-relation", resources=(rid,))
    return _new_decision(Decision, (_ALLOW, relation, 200, (rid,)))


def _decide_general(
    caller: Caller,
    route: Route,
    facts: RequestFacts,
    names: frozenset[str],
    relations: RelationIndex,
    now: datetime,
) -> Decision:
    """decide() after the tenant and role checks, for any route."""
    window = request_window(route, facts, now)
    if isinstance(window, Decision):
        return window
    if route.resource is None:
        # A list: the upstream answers for the caller's tenant only and every
        # record is checked again on the way back (check_response).
        return _ALLOW_LIST
    rid = resource_id(route, facts)
    if rid is None:
        return _DENY_ID_MISSING
    if not is_valid_resource_id(route.resource.kind, rid):
        return Decision.deny("resource-id-malformed", 400, (rid,))
    return _decide_resource(caller, route, rid, names, window, relations, now)


def _decide_resource(
    caller: Caller,
    route: Route,
    rid: str,
    names: frozenset[str],
    window: Window | None,
    relations: RelationIndex,
    now: datetime,
) -> Decision:
    kind = route.resource.kind if route.resource else ""
    tenant = caller.tenant.id
    if window is not None and route.window == "date":
        # The relation must hold on the day asked for (meter ownership changes);
        # each record is then checked at its own timestamp.
        rel = relations.find_during(kind, rid, tenant, names, window.start, window.end)
        if rel is None:
            return Decision.deny("no-relation", resources=(rid,))
        return Decision.allow(rel.relation, (rid,))
    relation = relations.holds(kind, rid, tenant, names, now)
    if relation is None:
        return Decision.deny("no-relation", resources=(rid,))
    if window is not None and relation in route.window_bound:
        # D2: a supplier's view ends where its contract ends. Another grant
        # (a mandate) may still cover the window.
        covering = [
            r
            for r in relations.of(kind, rid)
            if r.tenant == tenant and r.relation in names and r.holds_at(now)
            and (r.relation not in route.window_bound or r.covers(window.start, window.end))
        ]
        if not covering:
            return Decision.deny("window-outside-contract", resources=(rid,))
        relation = covering[0].relation
    return Decision.allow(relation, (rid,))
