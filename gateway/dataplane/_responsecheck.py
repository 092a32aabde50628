"""The data plane's *check response* stage: an upstream's answer reaches the
caller only once it is known to be the caller's own (D1, D3, D9, D11).

In order (the stage runs after *forward*, see :mod:`gateway.dataplane._pipeline`):

1. the upstream's status: a 5xx is 502, its own error body never passed on;
2. the body parsed with the nesting limit and one value per key
   (:mod:`gateway.core.jsonlimits`): duplicate keys are withheld like a
   misroute (``response-duplicate-key``). A one-record answer whose check
   reads only top-level strings (``Route.record_fields``), for a caller
   whose answer is not pseudonymised, is proven in one pass in C and only
   those strings are made (``record_strings``), and so is a list answer's
   (``Route.listed_fields``, ``records_strings``: the named strings of
   each record); whatever that does not prove is parsed in full;
3. :func:`gateway.core.check.check_response`, record by record; a record
   that is not the caller's is withheld, and an isolation violation
   (``ISOLATION_REASONS``) is counted in
   ``gateway_isolation_violations_total`` and logged (its audit and SOC
   events follow from the reason, in :mod:`gateway.dataplane._trace`), and
   the owners of the foreign records it held are notified
   (:mod:`gateway.core.breach`, delivered by the push outbox);
4. a Connect My Home status update flows back to the coordinating DSO;
5. the classification label and whether this caller may receive it (D11);
6. an IT provider's keyed pseudonyms (D9), fail closed;
7. the answer: the upstream's bytes unchanged, or the checked copy
   re-serialised when anything was removed or replaced.

Every refusal raises :class:`RequestRefused` / :class:`UpstreamFailed`; the
pipeline turns it into the problem document and the audit event.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from gateway.core.breach import breach_notices
from gateway.core.check import DUPLICATE_KEY, ISOLATION_REASONS, ForeignRecord, check_response
from gateway.core.classification import classify, may_receive
from gateway.core.decide import RequestFacts
from gateway.core.headers import response_headers
from gateway.core.jsonlimits import (
    MAX_DEPTH,
    DuplicateKey,
    TooDeep,
    loads_limited,
    record_strings,
    records_strings,
)
from gateway.core.model import Caller
from gateway.core.pseudonym import Pseudonymiser, find_leaks
from gateway.core.relations.index import RelationIndex
from gateway.dataplane._exchange import Exchange
from gateway.dataplane._trace import SERVER_HEADER
from gateway.edge import Answer
from gateway.errors import RequestRefused, UpstreamFailed
from gateway.metrics import GatewayMetrics
from gateway.push import PushService

# The data plane's logger: operators filter isolation warnings by it.
log = logging.getLogger("gateway.dataplane")
JSON = "application/json"
CLASSIFICATION_HEADER = "X-Classification"
_CLASSIFICATION_NAME = CLASSIFICATION_HEADER.lower()


class ResponseCheck:
    def __init__(
        self,
        *,
        metrics: GatewayMetrics,
        push: PushService | None = None,
        pseudonyms: Callable[[str], Pseudonymiser] | None = None,
        security_contact: Callable[[str], str | None] = lambda tenant: None,
    ) -> None:
        self.metrics = metrics
        # Where a Connect My Home status update is passed on, and where the
        # owners of withheld records are notified.
        self.push = push
        self.pseudonyms = pseudonyms  # D9: the keyed pseudonymiser of a tenant
        self.security_contact = security_contact  # a tenant's, from its tenant file

    def check(self, ex: Exchange, facts: RequestFacts, relations: RelationIndex,
              upstream: Any, now: datetime) -> Answer:
        """The caller's answer built from the upstream's, or a refusal raised."""
        assert ex.match is not None
        route = ex.match.route
        status = upstream.status
        if status >= 500:
            raise UpstreamFailed(502, "upstream-5xx")
        if status >= 400:
            # The upstream's own error body is not checked, so it is not passed on.
            raise RequestRefused(status if status in (400, 404, 409, 422) else 502,
                                 f"upstream-{status}")
        if not 200 <= status < 300 or upstream.content_type != JSON:
            raise UpstreamFailed(502, "upstream-unexpected-answer")
        caller = ex.resolved()
        pseudonymise = caller.tenant.kind == "it-provider" and self.pseudonyms is not None
        raw = upstream.body
        parsed = None
        if not pseudonymise and type(raw) is bytes:
            # Only what the check reads (the route has no field rule and
            # nothing to notify, so the body itself is never re-made): the
            # answer goes out as the upstream's bytes, proven here.
            fields = route.record_fields
            if fields is not None and record_strings is not None:
                parsed = record_strings(raw, fields, MAX_DEPTH)
            elif (listed := route.listed_fields) is not None and records_strings is not None:
                parsed = records_strings(raw, listed[0], listed[1], MAX_DEPTH)
        try:
            if parsed is None:
                parsed = loads_limited(raw, max_depth=MAX_DEPTH)
        except DuplicateKey as exc:
            # SECURITY: D1. The checked copy holds one value per key, the bytes
            # forwarded unchanged may hold two (a client keeping the first
            # would read a record the check never saw): withheld like a misroute.
            self._isolation_violation(ex, DUPLICATE_KEY, relations, now)
            raise UpstreamFailed(502, DUPLICATE_KEY) from exc
        except TooDeep as exc:
            raise UpstreamFailed(502, "upstream-json-too-deep") from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise UpstreamFailed(502, "upstream-malformed-json") from exc
        verdict = check_response(caller, route, facts, relations, parsed, now)
        if not verdict.decision.allowed:
            ex.resources = verdict.decision.resources
            if verdict.decision.reason in ISOLATION_REASONS:
                self._isolation_violation(ex, verdict.decision.reason, relations, now,
                                          verdict.foreign)
            raise UpstreamFailed(502, verdict.decision.reason)
        if route.notify == "cmh-status" and self.push is not None:
            # Status updates flow back to the coordinating DSO only.
            rid = facts.params.get("request_id", "")
            self.push.notify_status(rid, verdict.body,
                                    relations.holders("cmh-request", rid, "coordinator", now),
                                    caller.tenant_id)
        headers, labels = response_headers(upstream.headers, _CLASSIFICATION_NAME)
        label = self._classification(ex, caller, labels)
        changed = verdict.changed
        if pseudonymise:
            changed = self._pseudonymise(ex, verdict.body) or changed
        body = json.dumps(verdict.body).encode() if changed else raw
        headers["Server"] = SERVER_HEADER
        headers["X-Request-Id"] = ex.incident
        headers[CLASSIFICATION_HEADER] = label
        return Answer(status=status, body=body, content_type=JSON, headers=headers)

    def _isolation_violation(self, ex: Exchange, reason: str, relations: RelationIndex,
                             now: datetime, foreign: tuple[ForeignRecord, ...] = ()) -> None:
        """Counted in gateway_isolation_violations_total and logged; the audit
        and SOC events follow from the reason (ISOLATION_REASONS); the
        owners of the foreign records are notified."""
        assert ex.match is not None
        route = ex.match.route
        self.metrics.isolation_violations.labels(
            ex.resolved().tenant_id, route.upstream, "response").inc()
        log.warning("isolation violation withheld", extra={
            "incident": ex.incident, "tenant": ex.resolved().tenant_id, "route": route.name,
            "reason": reason})
        if foreign:
            self._notify_owners(ex, reason, relations, now, foreign)

    def _notify_owners(self, ex: Exchange, reason: str, relations: RelationIndex,
                       now: datetime, foreign: tuple[ForeignRecord, ...]) -> None:
        """D1, D12: the owner of the records, not only the operator's SOC, is
        told (never the records). The answer is withheld whatever happens
        here: a notification that cannot be queued is logged, not raised."""
        assert ex.match is not None
        route = ex.match.route
        notices, unowned = breach_notices(
            incident=ex.incident, at=now, shared_system=route.upstream, route=route.name,
            requested_by=ex.resolved().tenant_id, reason=reason, foreign=foreign,
            relations=relations)
        if unowned:
            log.warning("withheld records without an owner in the feed", extra={
                "incident": ex.incident, "records": unowned})
        if not notices:
            return
        if self.push is None:
            log.error("breach notifications not queued: no push outbox configured",
                      extra={"incident": ex.incident})
            return
        try:
            self.push.notify_breach(notices, self.security_contact)
        except Exception:  # the outbox or the audit log away: the SOC has the incident
            log.exception("breach notifications not queued", extra={"incident": ex.incident})

    def _classification(self, ex: Exchange, caller: Caller, labels: list[str]) -> str:
        """D11: the answer's label (``labels``: what the upstream sent, its
        field's name in any case: "x-classification: C4" is a label, not an
        absent one the route's default would replace), and whether this
        caller may receive it."""
        assert ex.match is not None
        policy = ex.match.route.classification
        if len(labels) > 1:
            # SECURITY: two labels: which one holds is not the gateway's guess.
            raise UpstreamFailed(502, "classification-invalid")
        label = classify(labels[0] if labels else None, policy)
        if label is None:
            raise UpstreamFailed(502, "classification-invalid")  # fail closed, never guess
        ex.label = label
        # The records passed the response check as the caller's own; an IT
        # provider is never their owner, only a contracted external (D9).
        owners = frozenset() if caller.tenant.kind == "it-provider" \
            else frozenset({caller.tenant_id})
        decision = may_receive(label, caller, owners, policy)
        if not decision.allowed:
            raise RequestRefused(403, decision.reason)
        self.metrics.child(self.metrics.classified_responses, label).inc()
        return label

    def _pseudonymise(self, ex: Exchange, body: Any) -> bool:
        """D9: an IT provider gets keyed pseudonyms, never a raw identifier."""
        assert self.pseudonyms is not None
        try:
            replaced = self.pseudonyms(ex.resolved().tenant_id).apply(body)
        except (ValueError, TypeError) as exc:
            raise UpstreamFailed(502, "pseudonymisation-impossible") from exc
        if find_leaks(body):
            raise UpstreamFailed(502, "pseudonymisation-leak")  # fail closed
        return replaced > 0
