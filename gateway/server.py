"""Assembles a gateway from its configuration and runs its listeners."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import ssl
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.admin import (
    audit_routes,
    build_admin_app,
    combine,
    nrn_routes,
    usage_routes,
    vault_routes,
)
from gateway.audit import (
    AuditKeys,
    AuditPruner,
    ChainedAuditLog,
    SecurityEvents,
    SyslogSink,
    UsageLedger,
)
from gateway.canary import CanaryProber
from gateway.config import GatewayConfig
from gateway.core.catalog import default_route_table
from gateway.core.pseudonym import Pseudonymiser
from gateway.core.relations.index import RelationIndex
from gateway.dataplane import DataPlane
from gateway.edge import (
    CallerResolver,
    ConnectionBook,
    DataServer,
    GuardedAppRunner,
    OpenConnections,
    Peers,
    TlsSite,
    admin_refusal,
    bind,
    event_loop_name,
    forget_handshakes,
    observe_handshakes,
    rss_bytes,
)
from gateway.edge import self_check as edge_self_check
from gateway.errors import ConfigError, ListenerUnavailable, NotReadyYet
from gateway.files import load_relations, write_private
from gateway.fleet import FleetMember, relations_digest
from gateway.metrics import GatewayMetrics
from gateway.ops import build_ops_app
from gateway.pki import AdminRefused, AssertionSigner, Credentials, IssuancePolicy, KeyRing
from gateway.problem import new_incident_id
from gateway.push import Outbox, PostgresOutbox, PushService, open_outbox
from gateway.retention import Retention
from gateway.state import (
    SqliteStore,
    open_store,
)
from gateway.tenants import TenantRegistry, check_reach, load_tenants
from gateway.tls import client_context, install_read_buffer
from gateway.upstream import UpstreamPool
from gateway.vault import (
    BreakGlass,
    BreakGlassPolicy,
    Lockbox,
    MasterKeys,
    RekeyProgress,
    SecretNotFound,
    UpstreamCredentials,
    VaultLocked,
    identity_uri,
    open_vault,
)

log = logging.getLogger("gateway.server")
OUTBOX_KEY_ID = "outbox/data-key"
PSEUDONYM_KEY_ID = "pseudonyms/master"
MAINTENANCE_INTERVAL_S = 0.5
UPSTREAM_ROTATION_CHECK_S = 60.0
USAGE_FLUSH_S = 5.0


def _syslog_sink(url: str | None) -> SyslogSink | None:
    if url is None:
        return None
    scheme, _, rest = url.partition("://")
    host, _, port = rest.rpartition(":")
    return SyslogSink(host.strip("[]"), int(port), transport=scheme)


def with_application_name(url: str, replica_id: str) -> str:
    """``url`` with ``application_name=gateway/<replica_id>`` (kept when set)."""
    if "application_name=" in url:
        return url
    return f"{url}{'&' if '?' in url else '?'}application_name=gateway/{replica_id}"


def load_master_keys(config: GatewayConfig) -> MasterKeys:
    """The vault's master key from its file (0600) or the environment."""
    vc = config.vault
    try:
        if vc.key_file is not None:
            return MasterKeys.from_file(vc.key_file)
        return MasterKeys.from_env(vc.key_env)
    except VaultLocked as exc:
        raise ConfigError(f"{config.source}: vault: {exc}") from exc


class Gateway:
    # Built in __init__; named here because callables handed to earlier
    # collaborators refer to them (the pool and the vault side need each other).
    breakglass: BreakGlass
    upstream_creds: UpstreamCredentials

    def __init__(self, config: GatewayConfig, *, reuse_port: bool = False) -> None:
        self.config = config
        self.reuse_port = reuse_port  # a worker of `serve --workers N`
        config.local_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.metrics = GatewayMetrics()
        self.registry = load_tenants(config.tenants_dir)
        self._relations = self._load_relations(config.relations)
        self._relations_digest = ""  # set by _show_relations
        self.metrics.declare(self.registry.tenants, config.upstreams)
        self.metrics.show_contracts(self.registry.tenants.values())
        for path in (config.server_cert, config.server_key, config.trust_bundle):
            if not path.exists():
                raise ConfigError(f"{config.source}: tls: file not found: {path}")
        # The vault first: a wrong master key stops start-up before anything
        # else is opened or written.
        # In PostgreSQL, every connection of this process carries its replica
        # id (pg_stat_activity.application_name): the operator sees who is who.
        state_url = (with_application_name(config.state_url, config.fleet.replica_id)
                     if config.shared_state and config.state_url else config.state_url)
        self.vault_master = load_master_keys(config)
        self.rekey_progress = RekeyProgress()
        try:
            self.vault = open_vault(state_url, config.data_dir / "vault.db", self.vault_master)
        except VaultLocked as exc:
            raise ConfigError(f"{config.source}: vault: {exc}") from exc
        self.store = (open_store(state_url) if state_url is not None
                      else SqliteStore(config.data_dir / "state.db"))
        # The fleet ([fleet]): a process on its own leads; in a fleet, the
        # control duties run where the advisory lock is held.
        self.role = config.fleet.role
        self.replica_id = config.fleet.replica_id
        self.state_url = state_url
        # This process's part in the fleet (none on its own: it leads alone).
        self.fleet = FleetMember(self, state_url) if config.shared_state and state_url else None
        self.draining = False
        self._stopped = False
        self.keyring = KeyRing(self.store, token_lifetime=timedelta(
            seconds=config.assertion_lifetime_s),
            publish_ahead=timedelta(seconds=config.signing_publish_ahead_s))
        self.signer = AssertionSigner(self.keyring, lifetime_s=config.assertion_lifetime_s)
        # D10: hash-chained, checkpoints signed with the audit key.
        self.audit_keys = AuditKeys(config.local_dir / "audit-key")
        self.audit = ChainedAuditLog(
            config.local_dir / "audit.jsonl", self.audit_keys.key, self.audit_keys.kid,
            checkpoint_every=config.audit.checkpoint_every,
            checkpoint_interval_s=config.audit.checkpoint_interval_s,
            segment_max_bytes=config.audit.segment_max_bytes,
            segment_max_age_s=config.audit.segment_max_age_s)
        ca = config.ca
        self.soc = SecurityEvents(file=config.soc_file, webhook=config.soc_webhook,
                                  syslog=_syslog_sink(config.soc_syslog))
        self.credentials = Credentials(
            store=self.store, trust_domain=config.trust_domain, registry=lambda: self.registry,
            keyring=self.keyring, metrics=self.metrics, audit=self.audit, soc=self.soc,
            server_cert=config.server_cert, server_key=config.server_key,
            trust_bundle=config.trust_bundle,
            policy=IssuancePolicy(
                default_lifetime=timedelta(days=ca.client_lifetime_days if ca else 30),
                max_lifetime=timedelta(days=ca.max_lifetime_days if ca else 90)),
            rotation_overlap=timedelta(seconds=config.rotation_overlap_s),
            crl_next_update=timedelta(seconds=ca.crl_next_update_s if ca else 86400),
            # D8: a leaver's break-glass leases end at once, and what it held rotates.
            on_disable=[lambda key: self.breakglass.end_leases_of(key, "principal disabled")],
            leads=lambda: self.leading)
        self.credentials.bootstrap(ca.cert if ca else None, ca.key if ca else None)
        self.server_tls = self.credentials.serve_tls()
        # mTLS upstreams: the client certificate (from the vault) is the
        # credential. The pool and the vault side need each other: the pool
        # asks through this callable, bound once both exist.
        self.upstreams = UpstreamPool(
            config.upstreams, self.metrics,
            client_identity=lambda name: self.upstream_creds.client_identity(name))
        vc = config.vault
        self.upstream_creds = UpstreamCredentials(
            self.vault, self.upstreams, self.metrics,
            max_age=timedelta(days=vc.upstream_max_age_days), grace_s=vc.rotation_grace_s,
            issue_identity=lambda name: self.credentials.issue_upstream_identity(
                identity_uri(config.trust_domain, name)))
        self.upstream_creds.load(config.upstreams)
        # D7: the tenants each privileged account reaches are told of its
        # cases and, in approve mode, consent (the push outbox tells them).
        check_reach(config.lockbox.reach, self.registry, str(config.source))
        self.lockbox = Lockbox(
            store=self.store, tenants=lambda: self.registry, reach=config.lockbox.reach,
            accounts=config.accounts, ttl=timedelta(seconds=config.lockbox.ttl_s),
            audit=self.audit, metrics=self.metrics, notify=self._notify_tenants, soc=self.soc)
        self.breakglass = BreakGlass(
            store=self.store, vault=self.vault, pool=self.upstreams, accounts=config.accounts,
            upstream_creds=self.upstream_creds, soc=self.soc, metrics=self.metrics,
            audit=self.credentials.record_admin_event, lockbox=self.lockbox,
            policy=BreakGlassPolicy(timedelta(seconds=vc.breakglass_max_duration_s),
                                    timedelta(seconds=vc.breakglass_emergency_duration_s),
                                    vc.approver_other_team))
        # Each connection's certificate is read once, at connect, for the
        # connection book and the resolver alike.
        self.peers = Peers(config.trust_domain)
        self.resolver = CallerResolver(self.registry, config.trust_domain, peers=self.peers,
                                       revocation=self.credentials.check)
        self.push = self._push_service(config)
        self.usage = UsageLedger(config.local_dir / "usage.db")
        self.data_plane = DataPlane(
            resolver=self.resolver, routes=default_route_table(),
            relations=lambda: self._relations, upstreams=self.upstreams, signer=self.signer,
            audit=self.audit, metrics=self.metrics, upstream_auth=self.upstream_creds.header,
            push=self.push, push_max_body_bytes=config.push_max_body_bytes, soc=self.soc,
            usage=self.usage, pseudonyms=self._pseudonymiser,
            consultations=self.store.add_consultation, approvals=self.store.nrn_approval,
            lockbox=self.lockbox,
            limits=config.limits,
            access_log=config.log.access)
        # D1, D12: the isolation canaries, asked for through this data plane.
        self.canary = None if not config.canary.enabled else CanaryProber(
            issue=self.credentials.issue_canary_identity, relations=lambda: self._relations,
            tenants=lambda: self.registry.tenants, target=self._own_data_listener,
            trust_bundle=config.trust_bundle, server_cert=config.server_cert,
            metrics=self.metrics, soc=self.soc, push=self.push,
            security_contact=self._security_contact,
            interval_s=config.canary.interval_s, timeout_s=config.canary.timeout_s)
        self._runners: list[web.BaseRunner] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._last_usage_flush = 0.0
        self.audit_pruner = None if config.audit.raw_retention_days == 0 else AuditPruner(
            self.audit, raw_retention_days=config.audit.raw_retention_days,
            rolled_up_through=self._rolled_up_through,
            public_keys=self.audit_keys.document,
            on_pruned=self.metrics.audit_pruned_segments.inc)
        # D8, D10: dead-letter payloads, disabled principals and the
        # consultation register are deleted when their period ends (a control duty).
        retained = self.outbox if self.push is not None else None
        self._retention_outbox: Outbox | None = None
        if retained is None and config.shared_state and state_url and self.role != "data":
            # A control plane without [push]: the fleet's outbox is in the shared
            # database all the same, and its dead letters' payloads are erased
            # from here (a handle without the data key: it reads no payload).
            retained = self._retention_outbox = PostgresOutbox(
                state_url, None, owner=config.fleet.replica_id)
        self.retention = Retention(
            store=self.store, outbox=retained,
            declared=lambda key: self.registry.principal(*key) is not None,
            config=config.retention, audit=self.audit, metrics=self.metrics)
        self._last_retention = float("-inf")
        self._pseudonymisers: dict[str, Pseudonymiser] = {}
        if self.role != "data":  # made here, so a data replica finds it (D9)
            self._data_key(PSEUDONYM_KEY_ID)
        self.data_port = 0
        self.ops_port = 0
        self.admin_port = 0
        self.metrics.config_loaded.set(1)
        self.metrics.memory_budget.set(config.limits.memory_budget_mb * 1024 * 1024)
        self.metrics.control_plane_leader.set(1 if self.leading else 0)

    def _notify_tenants(self, incident: str,
                        documents: Sequence[tuple[str, Mapping[str, Any]]]) -> int:
        """D7: lockbox notices go the way breach notices go (the push outbox)."""
        if self.push is None:
            log.warning("lockbox notices of %s not queued: no [push] here", incident)
            return 0
        return self.push.notify_tenants(incident, documents)

    def _rolled_up_through(self) -> float | None:
        flushed = self.usage.flushed_through
        return None if flushed is None else flushed.timestamp()

    def _pseudonymiser(self, tenant: str) -> Pseudonymiser:
        """D9: each IT provider's own pseudonym key, derived from a master
        secret that lives in the vault."""
        cached = self._pseudonymisers.get(tenant)
        if cached is None:
            master = self._data_key(PSEUDONYM_KEY_ID)
            cached = self._pseudonymisers[tenant] = Pseudonymiser.for_tenant(master, tenant)
        return cached

    def _data_key(self, secret_id: str) -> bytes:
        """A data key from the vault, made on first use. A data-plane replica
        only reads the vault: the control plane makes the keys (at its
        start), and a replica started before it refuses to start."""
        try:
            return self.vault.get(secret_id)
        except SecretNotFound:
            if self.role == "data":
                raise NotReadyYet(f"vault: {secret_id} is not there yet: the control plane "
                                  "makes the fleet's data keys at its start") from None
        key = os.urandom(32)
        self.vault.put(secret_id, key, kind="data-key")
        return key

    def _push_service(self, config: GatewayConfig) -> PushService | None:
        """Pushed-data delivery needs the gateway's own client certificate."""
        if config.push_cert is None or config.push_key is None:
            return None
        data_key = self._data_key(OUTBOX_KEY_ID)
        # In a fleet one outbox in PostgreSQL, whose parts the replicas claim.
        self.outbox = open_outbox(self.state_url if config.shared_state else None,
                                  config.local_dir / "outbox.db", data_key,
                                  owner=config.fleet.replica_id)
        endpoints = {t.id: t.push_endpoint for t in self.registry
                     if t.push_endpoint is not None}
        endpoints.update(config.push_endpoints)
        ctx = client_context(config.trust_bundle, config.push_cert, config.push_key)
        return PushService(outbox=self.outbox, relations=lambda: self._relations,
                           endpoints=endpoints, client_tls=ctx, metrics=self.metrics,
                           audit=self.audit,
                           max_pending_records=config.push_max_pending_records,
                           lease_s=config.push_lease_s)

    @property
    def ssl_context(self) -> ssl.SSLContext:
        return self.server_tls.context

    def _load_relations(self, path: Path) -> RelationIndex:
        try:
            index = load_relations(path)
        except FileNotFoundError as exc:
            raise ConfigError(f"{self.config.source}: gateway.relations: not found: {path}"
                              ) from exc
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"{path}: relation feed unreadable: {exc}") from exc
        self.metrics.relations_loaded.set(len(index))
        return index

    @property
    def leading(self) -> bool:
        """Whether the control duties run here: always for a process on its
        own; in a fleet, while this process holds the control lock."""
        return self.fleet.leading if self.fleet is not None else True

    # -- what the fleet member asks (FleetHost) ------------------------------------
    @property
    def relations(self) -> RelationIndex:
        return self._relations

    @property
    def relations_digest(self) -> str:
        return self._relations_digest

    def replace_relations(self, index: RelationIndex, digest: str) -> None:
        self._relations = index
        self._show_relations(index, digest)

    def addresses(self) -> tuple[str | None, str, str | None]:
        cfg = self.config
        return (f"{cfg.data.host}:{self.data_port}" if self.serves_data else None,
                f"{cfg.ops.host}:{self.ops_port}",
                f"{cfg.admin.host}:{self.admin_port}" if self.serves_admin else None)

    async def follow_state(self) -> None:
        """D8: what another replica or the control plane revoked, disabled,
        published or rotated. Shared state that cannot be read for longer
        than its bound fails closed: the data plane refuses with 503 and
        /readyz says why, until it is read."""
        try:
            await asyncio.to_thread(self.credentials.follow)
        except Exception:  # the database is away: keep the last view, within the bound
            log.warning("shared state not readable", exc_info=True)
        stale_s = time.monotonic() - self.credentials.followed_at
        self.metrics.state_staleness_seconds.set(stale_s)
        self.data_plane.state_stale = (self.config.shared_state
                                       and stale_s > self.config.state_max_staleness_s)

    def _show_relations(self, index: RelationIndex, digest: str | None = None) -> None:
        """Remember the live snapshot's digest (hashed once per snapshot) and
        show it in the metrics."""
        self._relations_digest = digest or relations_digest(index)
        self.metrics.relations_loaded.set(len(index))
        self.metrics.relations_digest_info.clear()
        self.metrics.relations_digest_info.labels(self._relations_digest).set(1)

    def reload(self) -> None:
        """Re-read tenants, the relation feed and the TLS files. Each is validated
        completely before it replaces the live one, so a broken file leaves the
        running snapshot in place; the swap itself is one reference store."""
        self._swap(*self._read_reloadable())

    async def reload_async(self) -> None:
        """The same for SIGHUP on a running loop: reading and validating (a
        10-million-relation snapshot: ~60 ms of CRC) happen in a worker
        thread, so traffic pauses only for the swap (bench/relations.py)."""
        registry, relations = await asyncio.to_thread(self._read_reloadable)
        digest = await asyncio.to_thread(relations_digest, relations)  # ~1 s per GB
        old = [self._relations]
        self._swap(registry, relations, digest)
        if self.fleet is not None:
            await self.fleet.publish_relations()
        # The last reference to the old snapshot goes in a worker thread:
        # freeing a 10-million-relation buffer takes ~30 ms (unless a request
        # in flight still holds it; then it goes when that request ends).
        await asyncio.to_thread(old.clear)

    def _read_reloadable(self) -> tuple[TenantRegistry, RelationIndex]:
        registry = load_tenants(self.config.tenants_dir)
        # D7: a tenant some account reaches stays declared (else it goes untold).
        check_reach(self.config.lockbox.reach, registry, str(self.config.source))
        return registry, self._load_relations(self.config.relations)

    def _swap(self, registry: TenantRegistry, relations: RelationIndex,
              digest: str | None = None) -> None:
        self.registry = registry
        self.data_plane.resolver.replace_registry(registry)
        self.data_plane.load_quotas()
        self.signer.forget_cached()  # roles in cached assertions may have changed
        self._relations = relations
        self._show_relations(relations, digest)
        # Server certificate, key and trust bundle files may have been replaced
        # by an external PKI: new handshakes use them, open connections stay.
        self.credentials.refresh()
        self.metrics.declare(registry.tenants, self.config.upstreams)
        self.metrics.show_contracts(registry.tenants.values())
        log.info("reloaded %d tenants and %d relations", len(registry), len(relations))

    @property
    def serves_data(self) -> bool:
        return self.role != "control"

    @property
    def serves_admin(self) -> bool:
        return self.role != "data"

    async def start(self, data_sock: socket.socket | None = None,
                    ops_sock: socket.socket | None = None,
                    admin_sock: socket.socket | None = None) -> None:
        """Open the listeners of this process's role: the data plane (roles
        all and data), the admin plane (all and control) and the ops plane."""
        cfg = self.config
        self.metrics.event_loop_info.labels(event_loop_name()).set(1)
        bound: list[socket.socket] = []  # closed again if a later one cannot bind
        try:
            if self.serves_data and data_sock is None:
                # Workers of one host share the data port (SO_REUSEPORT).
                data_sock = bind(cfg.data.host, cfg.data.port, reuse_port=self.reuse_port,
                                 listener="data plane")
                bound.append(data_sock)
            if ops_sock is None:
                ops_sock = bind(cfg.ops.host, cfg.ops.port, listener="ops plane")
                bound.append(ops_sock)
            if self.serves_admin and admin_sock is None:
                admin_sock = bind(cfg.admin.host, cfg.admin.port, listener="admin plane")
        except ListenerUnavailable:
            for sock in bound:
                sock.close()
            raise
        await self.upstreams.start(cfg.health_interval_s)
        limits = cfg.limits
        edge_self_check(self.ssl_context, limits)
        install_read_buffer()  # 32 KiB per TLS connection, not asyncio's 256 KiB
        self.connections = ConnectionBook(
            limits, cfg.trust_domain, peers=self.peers,
            on_refused=lambda reason: self.metrics.connections_refused.labels(
                "data", reason).inc())
        if data_sock is not None:
            server = DataServer(self.data_plane, limits, self.connections,
                                http_server=cfg.http_server, access_log=None)
            data_runner = web.ServerRunner(server, handle_signals=False,
                                           shutdown_timeout=cfg.drain_timeout_s)
            await data_runner.setup()
            await TlsSite(data_runner, data_sock, ssl_context=self.ssl_context,
                          handshake_timeout_s=limits.handshake_timeout_s,
                          connections=self._count_connections("data")).start()
            self._runners.append(data_runner)
            self.data_port = data_sock.getsockname()[1]
        ops_runner = web.AppRunner(build_ops_app(
            self.metrics, self.upstreams, self.signer, lambda: True,
            lambda: self.credentials.crl,
            self.audit_keys.document, shedding=self._shedding, replica=self._replica_status),
            access_log=None)
        await ops_runner.setup()
        ops_server = ops_runner.server  # plain HTTP: aiohttp's server knows its connections
        assert ops_server is not None
        self.metrics.connections_open.labels("ops").set_function(
            lambda: len(ops_server.connections))
        await web.SockSite(ops_runner, ops_sock).start()
        self._ops_runner: web.BaseRunner = ops_runner
        self.ops_port = ops_sock.getsockname()[1]
        if admin_sock is not None:
            admin_app = build_admin_app(
                self.credentials, self.resolver, self.metrics, rekey=self.rekey,
                rekey_progress=lambda: self.rekey_progress,
                extra=combine(vault_routes(self.vault, self.upstream_creds, self.breakglass,
                                           self.rekey), usage_routes(self.usage, self.store),
                              audit_routes(self.rotate_audit_key),
                              nrn_routes(self.store)))
            # The admin plane gets the same edge limits (own connection book).
            admin_runner = GuardedAppRunner(
                admin_app, access_log=None, edge=limits, shutdown_timeout=cfg.drain_timeout_s,
                book=ConnectionBook(limits, cfg.trust_domain, peers=self.peers,
                                    on_refused=lambda reason: self.metrics.connections_refused
                                    .labels("admin", reason).inc()),
                refuse=admin_refusal)
            await admin_runner.setup()
            await TlsSite(admin_runner, admin_sock, ssl_context=self.ssl_context,
                          handshake_timeout_s=limits.handshake_timeout_s,
                          connections=self._count_connections("admin")).start()
            self._runners.append(admin_runner)
            self.admin_port = admin_sock.getsockname()[1]
        await self.soc.start()
        if self.push is not None and self.serves_data:
            await self.push.start()
        self._tasks = [asyncio.create_task(self._maintain()),
                       asyncio.create_task(self._rotate_upstreams())]
        if self.canary is not None and self.role == "all":  # worker 0 of --workers N
            self._tasks.append(asyncio.create_task(self.canary.run()))
        self._show_relations(self._relations)
        if self.fleet is not None:
            await self.fleet.start()
        observe_handshakes(self.ssl_context, self._handshake_failed)
        planes = [f"data plane on {cfg.data.host}:{self.data_port} (mTLS)"] * self.serves_data
        planes += [f"admin plane on {cfg.admin.host}:{self.admin_port} (mTLS)"] * \
            self.serves_admin
        log.info("%s (%s%s): %s, ops plane on %s:%d", self.replica_id, self.role,
                 ", leading" if self.leading else "", ", ".join(planes), cfg.ops.host,
                 self.ops_port)

    def _security_contact(self, tenant: str) -> str | None:
        found = self.registry.get(tenant)
        return found.security_contact if found is not None else None

    def _own_data_listener(self) -> tuple[str, int]:
        """Where the canary prober reaches this process's data plane."""
        host = self.config.data.host
        with contextlib.suppress(ValueError):  # a name: asked as it is
            address = ipaddress.ip_address(host)
            if address.is_unspecified:  # listening everywhere: ask on loopback
                host = "::1" if address.version == 6 else "127.0.0.1"
        return host, self.data_port

    def _count_connections(self, listener: str) -> OpenConnections:
        """The open connections of a TLS listener, as gateway_connections_open
        shows them (read when scraped: nothing on the request path)."""
        connections = OpenConnections()
        self.metrics.connections_open.labels(listener).set_function(lambda: connections.count)
        return connections

    def _shedding(self) -> str | None:
        """Why this replica should get no traffic now, or None."""
        if self.draining:
            return "draining"
        if self.data_plane.over_memory_budget:
            return "memory"
        if self.data_plane.state_stale:
            return "state-stale"
        return None

    def _replica_status(self) -> dict[str, Any]:
        return {"replica": self.replica_id, "role": self.role, "leader": self.leading,
                "pid": os.getpid()}

    def _handshake_failed(self, reason: str) -> None:
        self.metrics.tls_handshake_failures.labels(reason).inc()
        if reason in ("revoked", "unknown-ca"):
            # D12: a revoked certificate or a foreign CA knocking.
            self.soc.emit("tls-handshake-refused", "warning", new_incident_id(), reason=reason)

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL_S)
            try:
                budget = self.config.limits.memory_budget_mb * 1024 * 1024
                self.data_plane.over_memory_budget = rss_bytes() > budget
                if self.fleet is None:  # else the member does it, woken by NOTIFY
                    await self.follow_state()
                # The uses noted since the last round: a commit (and SQLite's
                # fdatasync) in a worker thread, not a pause of the loop.
                await asyncio.to_thread(self.credentials.flush_seen,
                                        self.credentials.take_seen())
                self.credentials.maintain()  # the control duties only where they run
                if self.leading:
                    await self.breakglass.maintain()
                now = time.monotonic()
                if self.leading and \
                        now - self._last_retention >= self.config.retention.interval_s:
                    self._last_retention = now
                    await asyncio.to_thread(self.retention.enforce)
                if now - self._last_usage_flush >= USAGE_FLUSH_S:
                    await asyncio.to_thread(self.usage.flush)
                    await asyncio.to_thread(self.usage.prune)
                    self._last_usage_flush = now
                    if self.audit_pruner is not None:  # D10: raw events once rolled up
                        await asyncio.to_thread(self.audit_pruner.prune)
            except Exception:  # keep serving; the next round tries again
                log.exception("credential maintenance failed")

    async def _rotate_upstreams(self) -> None:
        """Scheduled rotation of the service credentials (by age, policy), by
        the process that runs the control duties."""
        while True:
            try:
                if self.leading:
                    await self.upstream_creds.maintain()
            except Exception:
                log.exception("upstream credential rotation failed")
            await asyncio.sleep(UPSTREAM_ROTATION_CHECK_S)

    def rekey(self) -> int:
        """Re-wrap every data key under a new master-key version, online. The
        key file first gets both versions, so a crash at any point leaves a
        file that opens the vault; then only the new version stays."""
        key_file = self.config.vault.key_file
        if key_file is None:
            raise AdminRefused(409, "master-key-from-environment",
                               "the master key comes from the environment: rekey offline "
                               "with a key file")
        if self.rekey_progress.running:
            raise AdminRefused(409, "rekey-running", "a rekey is running")
        both = self.vault_master.with_new_version()
        self.rekey_progress = RekeyProgress(running=True)
        try:
            write_private(key_file, both.to_text().encode())
            count = self.vault.rekey(both, progress=self.rekey_progress.step)
        finally:
            self.rekey_progress.running = False
        newest = MasterKeys({both.current_version: both.keys[both.current_version]})
        write_private(key_file, newest.to_text().encode())
        self.vault_master = newest
        return count

    def rotate_audit_key(self) -> dict[str, str]:
        """A new audit checkpoint key (docs/audit-format.md §6): the key files
        change first (the old public key is listed as retired before the new
        private key replaces it), then the log closes its lines under the old
        key and signs with the new one."""
        retired = self.audit_keys.kid
        key, kid = self.audit_keys.rotate()
        self.audit.rotate_key(key, kid)
        if self.fleet is not None:  # verifiers of the fleet find it there
            self.fleet.publish_audit_keys()
        return {"kid": kid, "retired": retired}

    async def stop(self) -> None:
        """Drain, then close (SIGTERM, SIGINT): this replica turns not-ready
        (/readyz 503 "draining", and the fleet stops counting it), its
        listeners stop accepting, requests in flight get drain_timeout_s to
        finish, idle keep-alive connections close; then everything they
        needed (the audit log, the outbox, the state) is closed."""
        if self._stopped:
            return
        self._stopped = True
        self.draining = True
        if self.fleet is not None:
            await self.fleet.leave()
        forget_handshakes(self.ssl_context)
        # Side by side: the drain timeout bounds the whole, not each listener.
        await asyncio.gather(*(runner.cleanup() for runner in self._runners))
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.fleet is not None:
            await self.fleet.close()
        await self.soc.close()
        if self.push is not None:
            await self.push.stop()
            self.outbox.close()
        if self._retention_outbox is not None:
            self._retention_outbox.close()
        self.credentials.maintain()  # flush last-seen
        await self._ops_runner.cleanup()  # last: /readyz said "draining" all along
        await self.upstreams.close()
        self.audit.close()
        if self.fleet is not None:
            await self.fleet.ship_last()
        self.store.close()
        self.vault.close()
        self.usage.close()
