"""Prometheus metrics of the gateway (names start with ``gateway_``), and the
client library's standard process, platform and garbage-collector series
(``process_resident_memory_bytes``, ``process_open_fds``, ``python_info``,
``python_gc_*``: the names every Prometheus user knows, read at scrape time).

Labels carry tenant ids (declared tenants only; anything else is
``unknown``), upstream names, route templates, status codes and reason codes:
bounded sets, never raw paths or resource ids.
"""

from __future__ import annotations

import importlib.metadata
import platform
import ssl
import time
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from gateway.core.model import Tenant
from gateway.core.relations.index import native_available

# The *_created series double the exposition for no use to the ops team.
disable_created_metrics()  # type: ignore[no-untyped-call]

DISTRIBUTION = "shared-grid-gateway"
UNKNOWN = "unknown"
NO_ROUTE = "none"

# Latency buckets around what a proxy hop costs: 1 ms .. 10 s.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _LoopValue:
    """One number of a series touched from the event loop's thread only: the
    client library's value takes a lock on every increment, which the data
    plane (one thread) pays for nothing, several times a request."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float, timestamp: float | None = None) -> None:
        self.value = value

    def get(self) -> float:
        return self.value

    def get_exemplar(self) -> None:
        return None


class LoopCounter(Counter):
    """A Counter whose children are incremented from the event loop's thread
    only (the data plane's per-request series), with no lock. The same
    series, samples and exposition as ``Counter``: it keeps the library's
    ``_child_samples`` and replaces only the value it reads
    (tests/test_metrics.py compares the two expositions)."""

    def _metric_init(self) -> None:
        self._value = _LoopValue()
        self._created = time.time()

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        if exemplar:
            raise ValueError("no exemplars on the data plane's series")
        self._value.value += amount


class LoopHistogram(Histogram):
    """A Histogram whose children observe from the event loop's thread only,
    with no lock, and the bucket found by bisection: the same exposition as
    ``Histogram`` (see LoopCounter)."""

    def _metric_init(self) -> None:
        self._created = time.time()
        self._sum = _LoopValue()
        self._buckets = [_LoopValue() for _ in self._upper_bounds]

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        if exemplar:
            raise ValueError("no exemplars on the data plane's series")
        self._sum.value += amount
        if amount == amount:  # a NaN is in no bucket (the library's rule)
            # The first bound at or above the amount: "amount <= bound" of Histogram.
            self._buckets[bisect_left(self._upper_bounds, amount)].value += 1


def version() -> str:
    """The installed gateway's version (its distribution's metadata)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:  # run from a bare source tree
        return "0+unknown"


def build_labels() -> tuple[str, str, str]:
    """gateway_build_info's labels: version, Python, OpenSSL (as the ssl module
    was linked, e.g. "OpenSSL 3.0.15 3 Sep 2024")."""
    return version(), platform.python_version(), ssl.OPENSSL_VERSION


class GatewayMetrics:
    """Owns one registry per gateway instance (no global state, so tests can
    run several gateways in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._request_series: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}
        r = self.registry
        # What a process exposes by default (only read when scraped): RSS
        # against gateway_memory_budget_bytes, CPU, open file descriptors.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        # The data plane's per-request series: touched from the loop only.
        self.requests = LoopCounter(
            "gateway_requests", "Requests answered on the data plane.",
            ["tenant", "upstream", "route", "status"], registry=r)
        self.duration = LoopHistogram(
            "gateway_request_duration_seconds", "Time from request to response, per tenant.",
            ["tenant", "upstream"], buckets=_BUCKETS, registry=r)
        self.denied = LoopCounter(
            "gateway_denied", "Requests refused by the gateway, by reason code.",
            ["tenant", "upstream", "reason"], registry=r)
        self.isolation_violations = Counter(
            "gateway_isolation_violations",
            "Records of another tenant caught by the routing check (direction: response, push).",
            ["tenant", "upstream", "direction"], registry=r)
        self.upstream_up = Gauge(
            "gateway_upstream_up", "1 when the last health probe of the upstream succeeded.",
            ["upstream"], registry=r)
        self.tenant_contract_end = Gauge(
            "gateway_tenant_contract_end_timestamp_seconds",
            "D9: when the tenant's contract ends (its tenant file's valid_until, the "
            "next day 00:00 UTC); only tenants whose contract ends.", ["tenant"], registry=r)
        self.upstream_circuit_open = Gauge(
            "gateway_upstream_circuit_open", "1 while the circuit breaker to an upstream is open.",
            ["upstream"], registry=r)
        self.state_staleness_seconds = Gauge(
            "gateway_state_staleness_seconds",
            "Seconds since this process last read the shared state's change number "
            "(revocations, disabled principals); past the bound it refuses requests.",
            registry=r)
        self.outbox_claims = Counter(
            "gateway_outbox_claims",
            "Outbox parts this replica claimed for delivery, by result: claimed, reclaimed "
            "(another owner's lease had run out), lost (its lease was no longer this "
            "replica's at renewal, acknowledgement or failure: nothing changed), empty (a "
            "claim found nothing due).", ["result"], registry=r)
        self.replicas_live = Gauge(
            "gateway_replicas_live",
            "Data-plane replicas of the fleet with a fresh heartbeat, not draining; each "
            "tenant's rate is divided among them (1 for a process on its own).",
            registry=r)
        self.replicas_live.set(1)
        self.control_plane_leader = Gauge(
            "gateway_control_plane_leader",
            "1 while this process runs the control duties (CRL signing, retirements, key "
            "rotation, break-glass expiry): the fleet's active control plane, or a process "
            "on its own.", registry=r)
        self.upstream_queue_depth = Gauge(
            "gateway_upstream_queue_depth",
            "Requests waiting for a slot of the upstream's pool (fair queuing by tenant).",
            ["upstream"], registry=r)
        self.upstream_duration = LoopHistogram(
            "gateway_upstream_duration_seconds",
            "Time from sending a data-plane request to an upstream to having its answer "
            "read (connecting included, waiting for a pool slot not), answered calls only.",
            ["upstream"], buckets=_BUCKETS, registry=r)
        self.connections_open = Gauge(
            "gateway_connections_open",
            "Connections open on a listener (data, admin: from accept, TLS handshake "
            "included; ops), read when scraped.", ["listener"], registry=r)
        self.memory_budget = Gauge(
            "gateway_memory_budget_bytes",
            "[limits] memory_budget_mb in bytes: above it (process_resident_memory_bytes) "
            "new connections and requests are refused and /readyz says shedding memory.",
            registry=r)
        self.upstream_errors = Counter(
            "gateway_upstream_errors", "Failed upstream calls, by kind.",
            ["upstream", "kind"], registry=r)
        self.identity_headers_dropped = Counter(
            "gateway_identity_headers_dropped",
            "Client-sent identity headers removed before forwarding.", ["tenant"], registry=r)
        self.relations_loaded = Gauge(
            "gateway_relations_loaded", "Relation tuples in the live snapshot.", registry=r)
        self.build_info = Gauge(
            "gateway_build_info",
            "1, labelled with the gateway's version and the Python and OpenSSL it runs on.",
            ["version", "python", "openssl"], registry=r)
        self.build_info.labels(*build_labels()).set(1)
        self.native_info = Gauge(
            "gateway_native_info",
            "1 for how this process checks ids, looks relations up and reads its wire forms "
            "(label impl: c, the accelerator gateway.core._native built at install, or "
            "python, the references).",
            ["impl"], registry=r)
        self.native_info.labels("c" if native_available() else "python").set(1)
        self.event_loop_info = Gauge(
            "gateway_event_loop_info",
            "1 for the event loop this process runs on (label loop: uvloop or asyncio; "
            "[gateway] event_loop).", ["loop"], registry=r)
        self.relations_digest_info = Gauge(
            "gateway_relations_digest_info",
            "1 for the SHA-256 (label digest) of the relation snapshot this process decides "
            "with: every replica of a fleet shows the one the control plane published.",
            ["digest"], registry=r)
        self.relations_snapshot_age_seconds = Gauge(
            "gateway_relations_snapshot_age_seconds",
            "Seconds since the live relation snapshot was published to the fleet (0 for a "
            "process that reads its own feed).", registry=r)
        self.certificate_expiry = Gauge(
            "gateway_certificate_expiry_timestamp_seconds",
            "Expiry (Unix time) of the newest active certificate of each principal; "
            "tenant=gateway for the gateway's own server certificate.",
            ["tenant", "principal"], registry=r)
        self.revocations = Counter(
            "gateway_revocations", "Certificates revoked, by reason code.", ["reason"],
            registry=r)
        self.tls_handshake_failures = Counter(
            "gateway_tls_handshake_failures",
            "Failed TLS handshakes on the mTLS listeners, by reason as far as OpenSSL says.",
            ["reason"], registry=r)
        self.signing_key_age = Gauge(
            "gateway_signing_key_age_seconds",
            "Age of the key now signing identity assertions.", registry=r)
        self.admin_actions = Counter(
            "gateway_admin_actions", "Admin-plane actions, by action and outcome.",
            ["action", "outcome"], registry=r)
        self.breakglass_checkouts = Counter(
            "gateway_breakglass_checkouts", "Privileged accounts checked out, by mode.",
            ["account", "mode"], registry=r)
        self.breakglass_active_leases = Gauge(
            "gateway_breakglass_active_leases", "Leases of privileged accounts running now.",
            ["account"], registry=r)
        self.breakglass_reviews_pending = Gauge(
            "gateway_breakglass_reviews_pending",
            "Emergency break-glass cases waiting for their post-incident review.", registry=r)
        self.vault_secret_age = Gauge(
            "gateway_vault_secret_age_seconds", "Age of the current version of a vault secret.",
            ["secret"], registry=r)
        self.push_records = Counter(
            "gateway_push_records", "Pushed records by outcome (queued, delivered, "
            "quarantined, dead_letter).", ["source", "tenant", "outcome"], registry=r)
        self.outbox_pending = Gauge(
            "gateway_outbox_pending", "Parts waiting for their receiver.", ["tenant"], registry=r)
        self.outbox_oldest_age = Gauge(
            "gateway_outbox_oldest_age_seconds", "Age of the oldest part waiting.", ["tenant"],
            registry=r)
        self.delivery_attempts = Counter(
            "gateway_delivery_attempts", "Delivery attempts to receivers, by result.",
            ["tenant", "result"], registry=r)
        self.lockbox_decisions = Counter(
            "gateway_lockbox_decisions", "Tenant lockbox outcomes (D7), per reached tenant: "
            "notified, pending, skipped (an emergency), approved, denied, expired, withdrawn, "
            "reviewed.",
            ["tenant", "decision"], registry=r)
        self.breach_notifications = Counter(
            "gateway_breach_notifications", "Breach notifications queued for the owner of "
            "records a withheld answer held (once per incident and owner).", ["owner"],
            registry=r)
        # D1, D12: the isolation canaries (gateway.canary).
        self.canary_probes = Counter(
            "gateway_canary_probes", "Canary probes by result: pass, breach (a foreign canary "
            "served), withheld (the routing check caught a foreign record), owner-unreachable, "
            "error.", ["result"], registry=r)
        self.canary_breaches = Counter(
            "gateway_canary_breaches", "Foreign canaries served: the canary's owner and the "
            "tenant whose canary principal was served it.", ["owner", "prober"], registry=r)
        self.canary_last_success = Gauge(
            "gateway_canary_last_success_timestamp_seconds", "When the canary prober last "
            "finished a round in which every probe passed (Unix time).", registry=r)
        self.classified_responses = LoopCounter(
            "gateway_classified_responses", "Answers delivered, by classification label (D11).",
            ["label"], registry=r)
        self.audit_write_failures = Counter(
            "gateway_audit_write_failures",
            "Audit events that could not be written; each refused its request (fail closed).",
            registry=r)
        self.connections_refused = Counter(
            "gateway_connections_refused",
            "New connections closed before any HTTP byte: connection-cap, "
            "tenant-connection-cap or memory-budget.", ["listener", "reason"], registry=r)
        self.audit_pruned_segments = Counter(
            "gateway_audit_pruned_segments",
            "Sealed audit segments deleted by the raw-event retention policy (D10).",
            registry=r)
        self.retention_deleted = Counter(
            "gateway_retention_deleted",
            "What the retention policy deleted ([retention], D8, D10), by category: "
            "dead-letter-payloads (parts whose payload was erased), disabled-principals, "
            "consultations (register entries).", ["category"], registry=r)
        for category in ("dead-letter-payloads", "disabled-principals", "consultations"):
            self.retention_deleted.labels(category)
        self.config_loaded = Gauge(
            "gateway_config_loaded", "1 once configuration, tenants and relations are loaded.",
            registry=r)

    def child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, remembered: the request path asks for the
        same few children thousands of times a second, and ``labels()``
        validates and locks every time (2.8 % of the request profile). Only for
        metrics whose label sets are never removed (not the certificate
        expiry gauge, which is cleared on refresh)."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def request_series(self, tenant: str, upstream: str, route: str,
                       status: int) -> tuple[Any, Any]:
        """The children a data-plane request updates, remembered together:
        its ``requests`` counter (by tenant, upstream, route and status) and
        its ``duration`` histogram (by tenant and upstream); one lookup per
        request instead of one per metric."""
        key = (tenant, upstream, route, status)
        found = self._request_series.get(key)
        if found is None:
            found = self._request_series[key] = (
                self.child(self.requests, tenant, upstream, route, str(status)),
                self.child(self.duration, tenant, upstream))
        return found

    def declare(self, tenants: Iterable[str], upstreams: Iterable[str]) -> None:
        """Create the zero series an alert needs to see a first increase
        (``increase(gateway_isolation_violations_total[5m]) > 0``)."""
        ups = list(upstreams)
        for tenant in tenants:
            for upstream in ups:
                self.isolation_violations.labels(tenant, upstream, "response")
        for upstream in ups:
            self.upstream_up.labels(upstream)

    def show_contracts(self, tenants: Iterable[Tenant]) -> None:
        """One series per tenant whose contract ends (D9), redone on reload."""
        self.tenant_contract_end.clear()
        for tenant in tenants:
            if tenant.contract_until is not None:
                self.tenant_contract_end.labels(tenant.id).set(
                    tenant.contract_until.timestamp())

    def render(self) -> bytes:
        return generate_latest(self.registry)
