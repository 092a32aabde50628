"""The data plane: one pipeline, ordered in one place.

::

    identity -> target -> hygiene -> route -> decide -> body
             -> forward (assertion) -> check response -> audit + metrics

The push intakes are not proxied: after *hygiene* they branch off to their
own stage (:mod:`gateway.dataplane._pushintake`); so does a tenant's read of
its breach notifications (:mod:`gateway.dataplane._notifications`), and its
lockbox answers (:mod:`gateway.dataplane._lockbox`). *check response* is
:mod:`gateway.dataplane._responsecheck`; *audit + metrics*, :mod:`gateway.dataplane._trace`.

The body is read and parsed after the decision (a caller that may not act
gets its 403 whatever it sent), except on a route that names its resource in
the body, where it comes just before; either way JSON is parsed with a
nesting limit and one value per key (gateway.core.jsonlimits).

Every stage either returns what the next needs or raises
:class:`RequestRefused` / :class:`UpstreamFailed`; ``handle()`` turns those
into an RFC 9457 problem with an incident id that is also in the audit
event. Nothing reaches an upstream before ``decide()`` allowed it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import datetime
from itertools import chain
from typing import Any

from gateway.audit import AuditSink, SecurityEvents, UsageLedger
from gateway.clock import utc_now
from gateway.config import EdgeLimits
from gateway.core.canary import CANARY_ROLE, decide_canary
from gateway.core.decide import RequestFacts, decide
from gateway.core.headers import HeaderRejected, clean_request_headers
from gateway.core.jsonlimits import MAX_DEPTH, loads_limited
from gateway.core.meters import check_meter_operation
from gateway.core.model import Caller
from gateway.core.nrn import APPROVAL_HEADER, lookup_refusal, principal_name
from gateway.core.occupancy import (
    CUSTOMER_PORTAL_ROLE,
    METER_NUMBER,
    ON_BEHALF_OF,
    decide_for_customer,
)
from gateway.core.paths import Target, TargetRejected, check_method, parse_target
from gateway.core.pseudonym import Pseudonymiser
from gateway.core.quota import Quotas
from gateway.core.relations.index import RelationIndex
from gateway.core.routes import RouteMatch, RouteTable
from gateway.dataplane._exchange import DEFAULT_LIMITS, PUSH_ROUTES, Exchange, read_body
from gateway.dataplane._fairslots import UpstreamSlots
from gateway.dataplane._lockbox import LockboxRoutes, is_lockbox
from gateway.dataplane._notifications import NOTIFICATIONS, NotificationsRead
from gateway.dataplane._pushgate import PushGate
from gateway.dataplane._pushintake import PushIntake
from gateway.dataplane._responsecheck import ResponseCheck
from gateway.dataplane._trace import RequestTrace
from gateway.edge import Answer, CallerResolver, CredentialRefused, HttpRequest
from gateway.errors import RequestRefused, UpstreamFailed
from gateway.metrics import GatewayMetrics
from gateway.pki import ASSERTION_HEADER, AssertionSigner
from gateway.push import PushService
from gateway.state import Consultation, NrnApproval
from gateway.upstream import UpstreamTransport
from gateway.vault import Lockbox

JSON = "application/json"
_NO_BODY = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})  # a body with these: 400


class DataPlane:
    def __init__(
        self,
        *,
        resolver: CallerResolver,
        routes: RouteTable,
        relations: Callable[[], RelationIndex],
        upstreams: UpstreamTransport,
        signer: AssertionSigner,
        audit: AuditSink,
        metrics: GatewayMetrics,
        upstream_auth: Callable[[str], tuple[str, str] | None] = lambda upstream: None,
        push: PushService | None = None,
        soc: SecurityEvents | None = None,
        usage: UsageLedger | None = None,
        pseudonyms: Callable[[str], Pseudonymiser] | None = None,
        consultations: Callable[[Consultation], None] | None = None,
        approvals: Callable[[str], NrnApproval | None] | None = None,
        lockbox: Lockbox | None = None,
        limits: EdgeLimits = DEFAULT_LIMITS,
        push_max_body_bytes: int = 256 * 1024 * 1024,
        clock: Callable[[], datetime] = utc_now,
        access_log: bool = False,
    ) -> None:
        self.resolver = resolver
        self.routes = routes
        self.relations = relations  # the live snapshot, swapped as a whole on reload
        self.upstreams = upstreams
        self.signer = signer
        self.audit = audit
        self.metrics = metrics
        self.upstream_auth = upstream_auth  # the vault's service credential per upstream
        self.consultations = consultations  # D8: the consultation register
        self.approvals = approvals  # D8: lookups approved beforehand by a manager
        self.limits = limits
        self.quotas = Quotas()
        # D1 availability: one upstream's pool shared fairly among the tenants waiting for it.
        self.slots = UpstreamSlots(
            {name: up.pool_size for name, up in upstreams.upstreams.items()},
            on_depth=lambda upstream, depth: metrics.upstream_queue_depth.labels(
                upstream).set(depth))
        self.in_flight = 0
        self.over_memory_budget = False  # set by the server's memory watch
        # Set by the server when the shared state could not be read for longer
        # than its bound: revocations might be missed, so nothing is served.
        self.state_stale = False
        self.load_quotas()
        self.push_gate = PushGate(limits)  # D1 availability: the push intakes' memory guard
        self.push_intake = None if push is None else PushIntake(
            push=push, gate=self.push_gate, registry=lambda: resolver.registry,
            limits=limits, max_body_bytes=push_max_body_bytes)
        self.response_check = ResponseCheck(metrics=metrics, push=push, pseudonyms=pseudonyms,
                                            security_contact=self._security_contact)
        self.notifications = NotificationsRead(push=push)  # D1, D12: GET /notifications
        self.lockbox = LockboxRoutes(lockbox=lockbox)  # D7: a tenant's consent, /lockbox
        self.clock = clock
        # The last stage of every request, refused or served: answer, audit, metrics.
        self.trace = RequestTrace(audit=audit, metrics=metrics, soc=soc, usage=usage,
                                  clock=clock, access=access_log)

    # -- the pipeline ----------------------------------------------------------
    async def handle(self, request: HttpRequest) -> Answer:
        """One request, start to end (the edge's :class:`DataHandler`)."""
        ex = Exchange()
        if self.in_flight >= self.limits.max_in_flight or self.over_memory_budget:
            # Shed load fast and cheaply: no identity, no upstream, no parsing.
            ex.reason = "overloaded" if not self.over_memory_budget else "memory-budget"
            response = self.trace.problem(503, ex, headers={"Retry-After": "1"})
            await self.trace.account(ex, request, response)
            return response
        self.in_flight += 1
        # The admitted request's pipeline, in this coroutine (a coroutine
        # of its own would be one more frame to make and to resume at every
        # await of the request).
        try:
            try:
                self._edge(request)
                if not self.audit.writable:
                    # SECURITY: no audit trail, no request: refused before it is forwarded.
                    raise RequestRefused(503, "audit-unavailable")
                if self.state_stale:
                    # SECURITY (D8): a view of revocations older than the bound
                    # could let a revoked certificate through: fail closed.
                    raise RequestRefused(503, "state-stale", headers={"Retry-After": "1"})
                ex.caller = caller = self.resolver.resolve(request)
                if caller.tenant.contract_bounded:
                    self._contract(caller)
                target = self._target(request)
                forward_headers = self._hygiene(request, ex)
                if target.path in PUSH_ROUTES and self.push_intake is not None:
                    response = await self.push_intake.handle(request, ex, PUSH_ROUTES[target.path])
                    await self.trace.account(ex, request, response)
                    return response
                if target.path == NOTIFICATIONS.template:
                    response = await self.notifications.handle(request, target, ex)
                    await self.trace.account(ex, request, response)
                    return response
                if is_lockbox(target.path):
                    response = await self.lockbox.handle(request, target, ex)
                    await self.trace.account(ex, request, response)
                    return response
                ex.match = self._route(request.method, target)
                ref = ex.match.route.resource
                body_decides = ref is not None and ref.source == "body"
                body, parsed = await self._body(request, ex) if body_decides else (None, None)
                facts = RequestFacts(ex.match.params, target.query_map, parsed)
                now = self.clock()
                relations = self.relations()
                self._decide(ex, caller, facts, relations, now, request)
                # Decided before any body byte is parsed: a tenant that may not
                # act here gets its 403 whatever it sent (D1, D6). The facts
                # keep no body: only a route that names its resource in the
                # body reads it (resource_id), and that route's body was
                # parsed before the decision. (No coroutine where there is
                # no body.)
                if not body_decides and not self._bodiless(request):
                    body, parsed = await self._body(request, ex)
                if ex.match.route.meter_operation:
                    self._meter_operation(ex, parsed, relations, now)
                if ex.match.route.sensitive:
                    self._register_consultation(request, ex, now)
                upstream = await self._forward_within_quota(ex, caller, target, forward_headers,
                                                            body, request.method)
                response = self.response_check.check(ex, facts, relations, upstream, now)
            except RequestRefused as exc:
                ex.reason = exc.reason
                if isinstance(exc, CredentialRefused):
                    ex.caller = exc.caller  # refused, but who it is goes to the audit and SOC
                response = self.trace.problem(exc.status, ex, headers=exc.headers,
                                              detail=exc.detail)
            except UpstreamFailed as exc:
                ex.reason = exc.reason
                response = self.trace.problem(exc.status, ex)
            await self.trace.account(ex, request, response)
            return response
        finally:
            self.in_flight -= 1

    def _security_contact(self, tenant: str) -> str | None:
        """A tenant's security contact, from its tenant file (reloaded with it)."""
        found = self.resolver.registry.get(tenant)
        return found.security_contact if found is not None else None

    def _contract(self, caller: Caller) -> None:
        """D9: a provider's or partner's certificates serve only while its
        contract (its tenant file's valid_from/valid_until) runs."""
        refused = caller.tenant.contract_refusal(self.clock())
        if refused is not None:
            raise CredentialRefused(refused, caller)

    def _edge(self, request: HttpRequest) -> None:
        """Header limits aiohttp does not apply itself, and framing it lets by."""
        raw = request.raw_headers
        if len(raw) > self.limits.max_headers:
            raise RequestRefused(431, "too-many-headers")
        # Each line's name and value, ": " and CR LF (summed in C: no generator).
        if (sum(map(len, chain.from_iterable(raw))) + 4 * len(raw)
                > self.limits.max_header_block_bytes):
            raise RequestRefused(431, "header-block-too-large")
        if request.version < (1, 1) and "Transfer-Encoding" in request.headers:
            # RFC 9112 §6.1: HTTP/1.0 has no chunked framing: a smuggling attempt.
            raise RequestRefused(400, "http10-transfer-encoding", headers={"Connection": "close"})

    def _target(self, request: HttpRequest) -> Target:
        try:
            check_method(request.method)
            return parse_target(request.raw_path)
        except TargetRejected as exc:
            headers = {"Allow": "GET, POST"} if exc.status == 405 else None
            raise RequestRefused.from_core(exc, headers=headers) from exc

    def _hygiene(self, request: HttpRequest, ex: Exchange) -> dict[str, str]:
        try:
            clean = clean_request_headers(request.headers.items())
        except HeaderRejected as exc:
            raise RequestRefused.from_core(exc) from exc
        if clean.dropped_identity:
            self.metrics.identity_headers_dropped.labels(ex.resolved().tenant_id).inc(
                len(clean.dropped_identity))
        return clean.forward

    def _route(self, method: str, target: Target) -> RouteMatch:
        found = self.routes.lookup(method, target.path)
        if found.match is not None:
            return found.match
        if found.allowed_methods:
            raise RequestRefused(405, "method-not-allowed",
                                 headers={"Allow": ", ".join(found.allowed_methods)})
        raise RequestRefused(404, "no-route")

    @staticmethod
    def _bodiless(request: HttpRequest) -> bool:
        """True for a method without a body (GET, HEAD, DELETE, OPTIONS);
        one sent with it is refused."""
        if request.method not in _NO_BODY:
            return False
        if request.body_exists:
            raise RequestRefused(400, "body-not-allowed")
        return True

    async def _body(self, request: HttpRequest, ex: Exchange) -> tuple[bytes | None, Any]:
        assert ex.match is not None
        route = ex.match.route
        if self._bodiless(request):
            return None, None
        raw = await read_body(request, route.max_body_bytes, ex, self.limits.body_timeout_s)
        if request.content_type != JSON:
            raise RequestRefused(415, "body-not-json")
        try:
            # Forwarded as sent: one value per key, so what the gateway checks
            # is what the upstream reads; nesting capped (no RecursionError).
            parsed = loads_limited(raw, max_depth=MAX_DEPTH)
        except ValueError as exc:  # UnicodeDecodeError too
            raise RequestRefused.for_body(exc) from exc
        if not isinstance(parsed, dict):
            raise RequestRefused(400, "body-not-object")
        return raw, parsed

    def _register_consultation(self, request: HttpRequest, ex: Exchange,
                               now: datetime) -> None:
        """D8: a national-register lookup is made by a person of the employer,
        names the approval its manager gave beforehand (its purpose and
        justification), and is registered before anything is consulted; no
        register, no consultation."""
        assert ex.match is not None
        if self.consultations is None or self.approvals is None:
            raise RequestRefused(503, "consultation-register-unavailable")
        caller = ex.resolved()
        resource = ex.resources[0] if ex.resources else ""
        approval_id = request.headers.get(APPROVAL_HEADER)
        approval = self.approvals(approval_id) if approval_id else None
        refused = lookup_refusal(caller, approval, resource, now)
        if refused is not None:
            raise RequestRefused(*refused)
        assert approval is not None
        self.consultations(Consultation(
            ex.incident, now, caller.tenant_id, principal_name(caller.principal),
            ex.match.route.name, resource, approval.purpose, approval.justification,
            approval.id, approval.approver or ""))

    def _meter_operation(self, ex: Exchange, body: Any, relations: RelationIndex,
                         now: datetime) -> None:
        """D5: no remote operation on a meter the feed says is in airplane mode."""
        refused = check_meter_operation(ex.resources[0], body, relations, now)
        if refused is not None:
            raise RequestRefused(refused.status, refused.reason)

    def _decide(self, ex: Exchange, caller: Caller, facts: RequestFacts,
                relations: RelationIndex, now: datetime, request: HttpRequest) -> None:
        assert ex.match is not None
        roles = caller.principal.roles
        if CUSTOMER_PORTAL_ROLE in roles:
            # D2, D4: the portal acts for one customer, proven by the meter number.
            headers = request.headers
            decision = decide_for_customer(caller, ex.match.route, facts,
                                           headers.get(ON_BEHALF_OF), headers.get(METER_NUMBER),
                                           relations, now)
        elif CANARY_ROLE in roles:
            # D1: the gateway's own isolation prober reads canary resources only.
            decision = decide_canary(caller, ex.match.route, facts, relations, now)
        else:
            decision = decide(caller, ex.match.route, facts, relations, now)
        ex.resources = decision.resources
        ex.reason = decision.reason
        if not decision.allowed:
            raise RequestRefused(decision.status, decision.reason)

    async def _forward_within_quota(self, ex: Exchange, caller: Caller, target: Target,
                                    headers: dict[str, str], body: bytes | None,
                                    method: str) -> Any:
        """D1 availability (noisy neighbours): a tenant's rate, concurrency and
        share of the upstream's pool, then a slot of that pool, queued fairly
        among tenants; one noisy tenant cannot starve the others."""
        assert ex.match is not None
        upstream = ex.match.route.upstream
        tenant = caller.tenant_id
        config = self.upstreams.upstreams[upstream]
        wait = self.quotas.admit(tenant, upstream, config.pool_size, time.monotonic())
        if wait is not None:
            raise RequestRefused(429, "rate-limited",
                                 headers={"Retry-After": str(max(1, math.ceil(wait)))})
        try:
            slots = self.slots
            if not slots.try_acquire(upstream, tenant):
                await slots.acquire(upstream, tenant, config.queue_timeout_s)
            try:
                upstream_target = self._upstream_request(ex, caller, target, headers, body)
                return await self.upstreams.call(upstream, method, upstream_target, headers, body)
            finally:
                slots.release(upstream, tenant)
        finally:
            self.quotas.release(tenant, upstream)

    def _upstream_request(self, ex: Exchange, caller: Caller, target: Target,
                          headers: dict[str, str], body: bytes | None) -> str:
        """What goes upstream besides the caller's request: the gateway's
        headers set in ``headers``; the upstream's target returned."""
        assert ex.match is not None
        route = ex.match.route
        headers[ASSERTION_HEADER] = self.signer.assertion(caller, route.upstream)
        credential = self.upstream_auth(route.upstream)
        if credential is not None:
            # SECURITY: injected here, never shown to a tenant, logged or audited.
            headers[credential[0]] = credential[1]
        # The caller's own (forwarded, lower-case names) are replaced, not
        # sent beside the gateway's for the transport to choose between.
        headers.pop("x-request-id", None)
        headers["X-Request-Id"] = ex.incident
        if body is not None:
            headers.pop("content-type", None)
            headers["Content-Type"] = JSON
        return target.upstream_target()[len(route.upstream) + 1:]

    def load_quotas(self) -> None:
        """Per-tenant quotas from ``tenants/`` (``[quota]``), default otherwise."""
        self.quotas.replace({tenant.id: tenant.quota for tenant in self.resolver.registry
                             if tenant.quota is not None})

    def header_timed_out(self) -> None:
        """A connection cut at the header deadline: no caller is known yet."""
        self.metrics.denied.labels("unknown", "none", "header-timeout").inc()

    def refuse_unparsed(self, request: HttpRequest, status: int,
                        reason: str) -> Answer:
        """A problem for a request the HTTP layer could not parse or handle."""
        ex = Exchange()
        ex.reason = reason
        try:
            ex.caller = self.resolver.resolve(request)
        except CredentialRefused as exc:
            ex.caller = exc.caller
        except RequestRefused:
            ex.caller = None
        response = self.trace.problem(status, ex)
        self.trace.account_now(ex, request, response)
        return response
