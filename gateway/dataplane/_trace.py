"""The last stage of every data-plane request, refused or served: the
answer's problem document, the audit event (D10), the SOC signal (D12), usage,
metrics and, when ``[log] access`` asks for it, the access line. "No trace,
no answer": an audit event that cannot be written turns the answer into a
503 before it is sent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime

from gateway.audit import AuditSink, AuditWriteFailed, RequestEvent, SecurityEvents, UsageLedger
from gateway.core.canary import CANARY_ROLE
from gateway.core.check import ISOLATION_REASONS
from gateway.core.denials import DenialDetector
from gateway.core.push.trust import PUSH_INTAKE_REFUSALS
from gateway.dataplane._exchange import CERTIFICATE_REFUSALS, Exchange
from gateway.edge import Answer, HttpRequest
from gateway.metrics import NO_ROUTE, UNKNOWN, GatewayMetrics
from gateway.problem import CONTENT_TYPE, own_slug_for, problem_body

log = logging.getLogger("gateway.dataplane")
access_log = logging.getLogger("gateway.access")  # gateway.logs.ACCESS_LOGGER
SERVER_HEADER = "gateway"  # no version banner
_OWN_4XX = frozenset({409, 422})
# Tenant lockbox refusals the SOC hears of (D7, D12).
LOCKBOX_REFUSALS = frozenset({"lockbox-not-your-tenant", "self-approval"})
# Methods an access line names; any other token (a 501) is "other": the
# line holds nothing a caller chose but from bounded sets.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestTrace:
    def __init__(self, *, audit: AuditSink, metrics: GatewayMetrics,
                 soc: SecurityEvents | None, usage: UsageLedger | None,
                 clock: Callable[[], datetime], access: bool) -> None:
        self.audit = audit
        self.access = access  # [log] access: one line per request
        self.metrics = metrics
        self.soc = soc
        self.usage = usage  # D10: aggregated usage, no payload
        self.denials = DenialDetector()  # D12: repeated denials from one principal
        self.clock = clock

    def problem(self, status: int, ex: Exchange, headers: dict[str, str] | None = None,
                 detail: str | None = None) -> Answer:
        slug = "isolation-violation" if ex.reason in ISOLATION_REASONS else None
        if slug is None and status in _OWN_4XX and not ex.reason.startswith("upstream-"):
            # The gateway's own 409/422 (a meter in airplane mode, a reused
            # batch id), not a shared system's refusal relayed.
            slug = own_slug_for(status)
        out = {"Server": SERVER_HEADER, "X-Request-Id": ex.incident, **(headers or {})}
        close = out.pop("Connection", None) == "close"
        response = Answer(status, problem_body(status, ex.incident, slug, detail), out,
                          content_type=CONTENT_TYPE)
        if close:
            response.force_close()  # framing we do not trust: no next request on it
        return response

    def _security_event(self, ex: Exchange, event: RequestEvent) -> None:
        """D12: what the SOC must see, with the incident id of the audit event."""
        assert self.soc is not None
        who = {"tenant": event.tenant, "principal": event.principal,
               "cert_serial": event.cert_serial, "route": event.route,
               "upstream": event.upstream, "reason": event.reason, "status": event.status}
        if ex.reason in ISOLATION_REASONS:
            self.soc.emit("isolation-violation", "critical", ex.incident, **who)
        elif ex.reason in CERTIFICATE_REFUSALS:
            self.soc.emit("certificate-refused", "warning", ex.incident, **who)
        elif ex.reason in PUSH_INTAKE_REFUSALS:
            # D1: a partner pushing into an intake that is not its own system's.
            self.soc.emit("push-intake-refused", "error", ex.incident, **who)
        elif ex.reason in LOCKBOX_REFUSALS:
            # D1, D7: answering for another tenant's lockbox, or for one's own request.
            self.soc.emit("lockbox-refused", "warning", ex.incident, **who)
        if ex.caller is not None and not event.canary and event.status < 500:
            # The canary prober is refused by design (D1): no SOC noise of its own.
            # A 5xx (an upstream down, the audit store failing) is no refusal of
            # what the principal asked: it is not probing.
            p = ex.caller.principal
            if self.denials.observe(f"{p.tenant}/{p.kind}/{p.name}", True, self.clock()):
                self.soc.emit("repeated-denials", "warning", ex.incident, **who)

    async def account(self, ex: Exchange, request: HttpRequest,
                      response: Answer) -> None:
        """Trace one answered request before it is sent: its audit event goes
        out with the others of this loop iteration (one write), and the
        answer waits for it (no trace, no answer)."""
        event = self._event(ex, request, response)
        try:
            await self.audit.record_soon(event)
        except AuditWriteFailed:
            self._no_trace(ex, response)
        self._after(ex, event, response)

    def account_now(self, ex: Exchange, request: HttpRequest,
                    response: Answer) -> None:
        """``account`` for the HTTP layer's own refusals, which are answered
        synchronously: the event is written at once."""
        event = self._event(ex, request, response)
        try:
            self.audit.record(event)
        except AuditWriteFailed:
            self._no_trace(ex, response)
        self._after(ex, event, response)

    def _event(self, ex: Exchange, request: HttpRequest,
               response: Answer) -> RequestEvent:
        tenant = ex.caller.tenant_id if ex.caller is not None else UNKNOWN
        route = ex.match.route if ex.match is not None else None
        caller = ex.caller
        status = response.status
        principal: str | None = None
        cert_serial: str | None = None
        cert_fingerprint: str | None = None
        canary = False
        if caller is not None:
            principal, cert_serial = caller.principal.name, caller.cert_serial
            cert_fingerprint = caller.cert_fingerprint
            # The gateway's own isolation prober (gateway.canary): marked, D10.
            canary = CANARY_ROLE in caller.principal.roles
        # In the fields' order, not by keyword: a named tuple made with its 16
        # keywords costs 2.6 times as much (12,600 instructions against 4,800).
        return RequestEvent(
            ex.incident, tenant, principal, cert_serial, cert_fingerprint, request.method,
            route.name if route is not None else None,  # route
            route.upstream if route is not None else NO_ROUTE,  # upstream
            "allow" if status < 400 else "deny",  # decision
            ex.reason, status, ex.resources, ex.bytes_in,
            len(response.body),  # bytes_out
            ex.label,  # classification
            canary)

    def _no_trace(self, ex: Exchange, response: Answer) -> None:
        # SECURITY: no trace, no answer (fail closed).
        log.error("audit write failed; refusing", extra={"incident": ex.incident})
        self.metrics.audit_write_failures.inc()
        # The reason it is refused now, not the relation that had allowed it.
        ex.reason = "audit-write-failed"
        response.set_status(503)
        response.body = problem_body(503, ex.incident, "unavailable")
        response.content_type = CONTENT_TYPE

    def _after(self, ex: Exchange, event: RequestEvent, response: Answer) -> None:
        """Metrics, usage and SOC signals, for the status actually answered.
        The canary prober's requests (``event.canary``) have metrics of their
        own (gateway_canary_*): they stay out of the tenants' request, denial
        and latency series (its refusals are by design, and would trip the
        denial-ratio alerts), out of usage (D10) and out of the
        repeated-denials detector; an isolation violation they meet still goes
        to the SOC."""
        tenant, upstream, status = event.tenant, event.upstream, response.status
        canary = event.canary
        if status >= 400:
            if not canary:
                self.metrics.denied.labels(tenant, upstream, ex.reason).inc()
            if self.soc is not None:
                self._security_event(ex, event)
        if canary:
            return
        route_name = ex.match.route.name if ex.match is not None else NO_ROUTE
        requests, duration = self.metrics.request_series(tenant, upstream, route_name, status)
        requests.inc()
        if self.usage is not None:
            self.usage.record(tenant, upstream, route_name, status, ex.bytes_in, event.bytes_out)
        took_s = time.perf_counter() - ex.started
        duration.observe(took_s)
        if self.access:
            self._access_line(ex, event, took_s)

    @staticmethod
    def _access_line(ex: Exchange, event: RequestEvent, took_s: float) -> None:
        """One line per request (gateway.logs.ACCESS_FIELDS): its incident, who,
        the route template (never the path: no resource id, no query), the
        outcome and the sizes; never a payload. Not the audit log (D10)."""
        access_log.info("request", extra={
            "incident": ex.incident, "tenant": event.tenant,
            "method": event.method if event.method in _METHODS else "other",
            "route": event.route or NO_ROUTE, "upstream": event.upstream,
            "status": event.status, "reason": ex.reason,
            "duration_ms": round(took_s * 1000, 3), "bytes_in": event.bytes_in,
            "bytes_out": event.bytes_out})
