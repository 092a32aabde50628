"""The isolation canary prober (D1, D12): an asyncio task of the gateway.

Every ``[canary] interval_s``, for every canary the relation feed marks
(:func:`gateway.core.canary.canaries`) and every declared tenant, one real
HTTPS request to this process's own data listener, with a short-lived
certificate of that tenant's canary principal made in-process by the CA:
identity, decide, upstream call and response check all run, as for a
partner. Each answer becomes one result (:func:`gateway.core.canary.probe_result`):

=================== ==========================================================
result              meaning
=================== ==========================================================
pass                the owner got its canary; another tenant was refused
breach              another tenant was *served* the canary: a ``critical``
                    ``canary-breach`` SOC event, gateway_canary_breaches_total
                    {owner, prober} and a breach notification to the owner
withheld            the routing check withheld a foreign record (the check
                    caught it; the owners were notified by the check itself)
owner-unreachable   the owner did not get its own canary
error               no answer (connection refused, timeout)
=================== ==========================================================

A round in which every probe passed sets
gateway_canary_last_success_timestamp_seconds. The requests are marked
``canary`` in the audit log and left out of usage and of the tenants'
request metrics (:mod:`gateway.dataplane._trace`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp
from cryptography import x509

from gateway.audit import SecurityEvents
from gateway.clock import utc_now
from gateway.core.breach import BreachNotice
from gateway.core.canary import BREACH, OK, RESULTS, Canary, canaries, probe_result
from gateway.core.relations.index import RelationIndex
from gateway.metrics import GatewayMetrics
from gateway.problem import new_incident_id
from gateway.push import PushService
from gateway.tls import client_context, load_chain_from_pem

log = logging.getLogger("gateway.canary")
# The canary certificates live an hour and are made again after half of it.
CERT_LIFETIME = timedelta(hours=1)
BREACH_REASON = "canary-breach"
# Tenants probing at once (each its own connection; one event loop serves both sides).
PARALLEL_TENANTS = 4

# (tenant, lifetime) -> (certificate PEM, key PEM), by the gateway's CA.
IssueIdentity = Callable[[str, timedelta], tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Probe:
    canary: Canary
    prober: str  # the tenant whose canary principal asked
    status: int | None
    result: str
    incident: str | None  # the gateway's X-Request-Id of the probe


class CanaryProber:
    def __init__(self, *, issue: IssueIdentity, relations: Callable[[], RelationIndex],
                 tenants: Callable[[], Iterable[str]], target: Callable[[], tuple[str, int]],
                 trust_bundle: Path, server_cert: Path, metrics: GatewayMetrics,
                 soc: SecurityEvents, push: PushService | None,
                 security_contact: Callable[[str], str | None],
                 interval_s: float, timeout_s: float,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.issue = issue
        self.relations = relations  # the live snapshot
        self.tenants = tenants  # the declared tenants, reloaded with their files
        self.target = target  # this process's data listener (host, port)
        self.trust_bundle = trust_bundle
        self.server_cert = server_cert
        self.metrics = metrics
        self.soc = soc
        self.push = push  # the breach notifications' outbox
        self.security_contact = security_contact
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.clock = clock
        self._identities: dict[str, tuple[float, bytes, bytes]] = {}
        self._found: tuple[tuple[int, int], tuple[Canary, ...]] | None = None
        self.rounds = 0  # rounds finished (tests wait for the first)
        for result in RESULTS:
            # Declared at start: GatewayCanaryProberSilent knows the prober runs.
            metrics.canary_probes.labels(result)

    async def run(self) -> None:
        """Rounds until cancelled; one that fails is logged and the next runs."""
        while True:
            try:
                await self.run_round()
            except Exception:
                log.exception("canary round failed")
            await asyncio.sleep(self.interval_s)

    def canaries(self) -> tuple[Canary, ...]:
        """The live snapshot's canaries, found once per snapshot (a scan of
        every tuple: the round runs it in a worker thread)."""
        relations = self.relations()
        # The snapshot's identity and size: no reference kept to an old one
        # (a reloaded 10-million-tuple snapshot is freed when traffic is done).
        key = (id(relations), len(relations))
        if self._found is None or self._found[0] != key:
            self._found = (key, canaries(relations))
        return self._found[1]

    async def run_round(self) -> list[Probe]:
        """One round: every canary, asked for as every tenant."""
        found = await asyncio.to_thread(self.canaries)
        if not found:
            log.warning("no canaries in the relation feed: nothing probed")
            return []
        tenants = sorted(self.tenants())
        gate = asyncio.Semaphore(PARALLEL_TENANTS)

        async def as_tenant(tenant: str) -> list[Probe]:
            async with gate:
                return await self._probe_as(tenant, found)

        probes = [p for ps in await asyncio.gather(*(as_tenant(t) for t in tenants))
                  for p in ps]
        results = Counter(p.result for p in probes)
        for result, n in results.items():
            self.metrics.canary_probes.labels(result).inc(n)
        for probe in probes:
            if probe.result == BREACH:
                self._breach(probe)
        if set(results) == {OK}:
            self.metrics.canary_last_success.set(time.time())
        else:
            log.warning("canary round: %s", dict(sorted(results.items())))
        self.rounds += 1
        return probes

    async def _probe_as(self, tenant: str, found: tuple[Canary, ...]) -> list[Probe]:
        host, port = self.target()
        host = f"[{host}]" if ":" in host else host
        ctx = client_context(self.trust_bundle)
        cert, key = self._identity(tenant)
        load_chain_from_pem(ctx, cert, key)
        server_name = _server_name(self.server_cert)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        out: list[Probe] = []
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for canary in found:
                status: int | None = None
                body = b""
                incident = None
                try:
                    async with session.get(f"https://{host}:{port}{canary.path}", ssl=ctx,
                                           server_hostname=server_name) as resp:
                        body = await resp.read()
                        status = resp.status
                        incident = resp.headers.get("X-Request-Id")
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    log.warning("canary probe without an answer: %s", exc)
                out.append(Probe(canary, tenant, status,
                                 probe_result(canary, tenant, status, body), incident))
        return out

    def _identity(self, tenant: str) -> tuple[bytes, bytes]:
        """The tenant's canary certificate, made again after half its life."""
        now = time.monotonic()
        held = self._identities.get(tenant)
        if held is None or now - held[0] > CERT_LIFETIME.total_seconds() / 2:
            cert, key = self.issue(tenant, CERT_LIFETIME)
            held = self._identities[tenant] = (now, cert, key)
        return held[1], held[2]

    def _breach(self, probe: Probe) -> None:
        """D1, D12: a foreign canary was served. The SOC is paged, the breach
        counted, and the canary's owner told (the breach notifications of
        gateway.core.breach, through the push outbox)."""
        canary = probe.canary
        incident = probe.incident or new_incident_id()
        log.critical("canary breach: %s's canary served to %s", canary.owner, probe.prober,
                     extra={"incident": incident})
        self.metrics.canary_breaches.labels(canary.owner, probe.prober).inc()
        self.soc.emit("canary-breach", "critical", incident, owner=canary.owner,
                      prober=probe.prober, route=canary.route, upstream=canary.upstream,
                      resource_kind=canary.kind, status=probe.status)
        if self.push is None:
            log.error("canary breach notification not queued: no push outbox configured",
                      extra={"incident": incident})
            return
        notice = BreachNotice(incident, canary.owner, self.clock(), canary.upstream,
                              canary.route, 1, probe.prober, BREACH_REASON, outcome="served")
        try:
            self.push.notify_breach([notice], self.security_contact)
        except Exception:  # the SOC has the incident; the next round finds it again
            log.exception("canary breach notification not queued",
                          extra={"incident": incident})


def _server_name(server_cert: Path) -> str | None:
    """The first DNS name of the data listener's certificate (read each time:
    it rotates), for the TLS check of the prober's own connection."""
    try:
        cert = x509.load_pem_x509_certificate(server_cert.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None
    names = san.get_values_for_type(x509.DNSName)
    return names[0] if names else None

