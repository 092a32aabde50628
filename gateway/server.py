"""Assembles a gateway from its configuration and runs its listeners."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from datetime import timedelta
from pathlib import Path

from aiohttp import web

from gateway.admin import audit_routes, build_admin_app, combine, usage_routes, vault_routes
from gateway.audit import (
    AuditKeys,
    AuditPruner,
    ChainedAuditLog,
    SecurityEvents,
    SyslogSink,
    UsageLedger,
)
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
    Peers,
    TlsSite,
    admin_refusal,
    bind,
    forget_handshakes,
    observe_handshakes,
    rss_bytes,
)
from gateway.edge import self_check as edge_self_check
from gateway.errors import ConfigError
from gateway.files import load_relations, write_private
from gateway.metrics import GatewayMetrics
from gateway.ops import build_ops_app
from gateway.pki import AdminRefused, AssertionSigner, Credentials, IssuancePolicy, KeyRing
from gateway.problem import new_incident_id
from gateway.push import Outbox, PushService
from gateway.state import SqliteStore, open_store
from gateway.tenants import TenantRegistry, load_tenants
from gateway.tls import client_context, install_read_buffer
from gateway.upstream import UpstreamPool
from gateway.vault import (
    BreakGlass,
    BreakGlassPolicy,
    MasterKeys,
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

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.metrics = GatewayMetrics()
        self.registry = load_tenants(config.tenants_dir)
        self._relations = self._load_relations(config.relations)
        self.metrics.declare(self.registry.tenants, config.upstreams)
        for path in (config.server_cert, config.server_key, config.trust_bundle):
            if not path.exists():
                raise ConfigError(f"{config.source}: tls: file not found: {path}")
        # The vault first: a wrong master key stops start-up before anything
        # else is opened or written.
        self.vault_master = load_master_keys(config)
        try:
            self.vault = open_vault(config.state_url, config.data_dir / "vault.db",
                                    self.vault_master)
        except VaultLocked as exc:
            raise ConfigError(f"{config.source}: vault: {exc}") from exc
        self.store = (open_store(config.state_url) if config.state_url is not None
                      else SqliteStore(config.data_dir / "state.db"))
        self.keyring = KeyRing(self.store, token_lifetime=timedelta(
            seconds=config.assertion_lifetime_s),
            publish_ahead=timedelta(seconds=config.signing_publish_ahead_s))
        self.signer = AssertionSigner(self.keyring, lifetime_s=config.assertion_lifetime_s)
        # D10: hash-chained, checkpoints signed with the audit key.
        self.audit_keys = AuditKeys(config.data_dir / "audit-key")
        self.audit = ChainedAuditLog(
            config.data_dir / "audit.jsonl", self.audit_keys.key, self.audit_keys.kid,
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
            on_disable=[lambda key: self.breakglass.end_leases_of(key, "principal disabled")])
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
        self.breakglass = BreakGlass(
            store=self.store, vault=self.vault, pool=self.upstreams, accounts=config.accounts,
            upstream_creds=self.upstream_creds, soc=self.soc, metrics=self.metrics,
            audit=self.credentials.record_admin_event,
            policy=BreakGlassPolicy(timedelta(seconds=vc.breakglass_max_duration_s),
                                    timedelta(seconds=vc.breakglass_emergency_duration_s),
                                    vc.approver_other_team))
        # Each connection's certificate is read once, at connect, for the
        # connection book and the resolver alike.
        self.peers = Peers(config.trust_domain)
        self.resolver = CallerResolver(self.registry, config.trust_domain, peers=self.peers,
                                       revocation=self.credentials.check)
        self.push = self._push_service(config)
        self.usage = UsageLedger(config.data_dir / "usage.db")
        self.data_plane = DataPlane(
            resolver=self.resolver, routes=default_route_table(),
            relations=lambda: self._relations, upstreams=self.upstreams, signer=self.signer,
            audit=self.audit, metrics=self.metrics, upstream_auth=self.upstream_creds.header,
            push=self.push, push_max_body_bytes=config.push_max_body_bytes, soc=self.soc,
            usage=self.usage, pseudonyms=self._pseudonymiser,
            consultations=self.store.add_consultation, limits=config.limits)
        self._runners: list[web.BaseRunner] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._last_usage_flush = 0.0
        self.audit_pruner = None if config.audit.raw_retention_days == 0 else AuditPruner(
            self.audit, raw_retention_days=config.audit.raw_retention_days,
            rolled_up_through=self._rolled_up_through,
            public_keys=self.audit_keys.document,
            on_pruned=self.metrics.audit_pruned_segments.inc)
        self._pseudonymisers: dict[str, Pseudonymiser] = {}
        self.data_port = 0
        self.ops_port = 0
        self.admin_port = 0
        self.metrics.config_loaded.set(1)

    def _rolled_up_through(self) -> float | None:
        flushed = self.usage.flushed_through
        return None if flushed is None else flushed.timestamp()

    def _pseudonymiser(self, tenant: str) -> Pseudonymiser:
        """D9: each IT provider's own pseudonym key, derived from a master
        secret that lives in the vault."""
        cached = self._pseudonymisers.get(tenant)
        if cached is None:
            try:
                master = self.vault.get(PSEUDONYM_KEY_ID)
            except SecretNotFound:
                master = os.urandom(32)
                self.vault.put(PSEUDONYM_KEY_ID, master, kind="data-key")
            cached = self._pseudonymisers[tenant] = Pseudonymiser.for_tenant(master, tenant)
        return cached

    def _push_service(self, config: GatewayConfig) -> PushService | None:
        """Pushed-data delivery needs the gateway's own client certificate."""
        if config.push_cert is None or config.push_key is None:
            return None
        try:
            data_key = self.vault.get(OUTBOX_KEY_ID)
        except SecretNotFound:
            data_key = os.urandom(32)
            self.vault.put(OUTBOX_KEY_ID, data_key, kind="data-key")
        self.outbox = Outbox(config.data_dir / "outbox.db", data_key)
        endpoints = {t.id: t.push_endpoint for t in self.registry
                     if t.push_endpoint is not None}
        endpoints.update(config.push_endpoints)
        ctx = client_context(config.trust_bundle, config.push_cert, config.push_key)
        return PushService(outbox=self.outbox, relations=lambda: self._relations,
                           endpoints=endpoints, client_tls=ctx, metrics=self.metrics,
                           audit=self.audit,
                           max_pending_records=config.push_max_pending_records)

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
        old = [self._relations]
        self._swap(registry, relations)
        # The last reference to the old snapshot goes in a worker thread:
        # freeing a 10-million-relation buffer takes ~30 ms (unless a request
        # in flight still holds it; then it goes when that request ends).
        await asyncio.to_thread(old.clear)

    def _read_reloadable(self) -> tuple[TenantRegistry, RelationIndex]:
        return load_tenants(self.config.tenants_dir), self._load_relations(self.config.relations)

    def _swap(self, registry: TenantRegistry, relations: RelationIndex) -> None:
        self.registry = registry
        self.data_plane.resolver.replace_registry(registry)
        self.data_plane.load_quotas()
        self.signer.forget_cached()  # roles in cached assertions may have changed
        self._relations = relations
        # Server certificate, key and trust bundle files may have been replaced
        # by an external PKI: new handshakes use them, open connections stay.
        self.credentials.refresh()
        self.metrics.declare(registry.tenants, self.config.upstreams)
        log.info("reloaded %d tenants and %d relations", len(registry), len(relations))

    async def start(self, data_sock: socket.socket | None = None,
                    ops_sock: socket.socket | None = None,
                    admin_sock: socket.socket | None = None) -> None:
        data_sock = data_sock or bind(self.config.data.host, self.config.data.port)
        ops_sock = ops_sock or bind(self.config.ops.host, self.config.ops.port)
        admin_sock = admin_sock or bind(self.config.admin.host, self.config.admin.port)
        await self.upstreams.start(self.config.health_interval_s)
        limits = self.config.limits
        edge_self_check(self.ssl_context, limits)
        install_read_buffer()  # 32 KiB per TLS connection, not asyncio's 256 KiB
        self.connections = ConnectionBook(
            limits, self.config.trust_domain, peers=self.peers,
            on_refused=lambda reason: self.metrics.connections_refused.labels(
                "data", reason).inc())
        server = DataServer(self.data_plane, limits, self.connections, access_log=None)
        data_runner = web.ServerRunner(server, handle_signals=False)
        await data_runner.setup()
        await TlsSite(data_runner, data_sock, ssl_context=self.ssl_context,
                      handshake_timeout_s=limits.handshake_timeout_s).start()
        ops_runner = web.AppRunner(build_ops_app(
            self.metrics, self.upstreams, self.signer, lambda: True,
            lambda: self.credentials.crl,
            self.audit_keys.document,
            shedding=lambda: "memory" if self.data_plane.over_memory_budget
            else "state-stale" if self.data_plane.state_stale else None),
            access_log=None)
        await ops_runner.setup()
        await web.SockSite(ops_runner, ops_sock).start()
        admin_app = build_admin_app(
            self.credentials, self.resolver, self.metrics, rekey=self.rekey,
            extra=combine(vault_routes(self.vault, self.upstream_creds, self.breakglass,
                                       self.rekey), usage_routes(self.usage, self.store),
                  audit_routes(self.rotate_audit_key)))
        # The admin plane gets the same edge limits (own connection book).
        admin_runner = GuardedAppRunner(
            admin_app, access_log=None, edge=limits,
            book=ConnectionBook(limits, self.config.trust_domain, peers=self.peers,
                                on_refused=lambda reason: self.metrics.connections_refused
                                .labels("admin", reason).inc()),
            refuse=admin_refusal)
        await admin_runner.setup()
        await TlsSite(admin_runner, admin_sock, ssl_context=self.ssl_context,
                      handshake_timeout_s=limits.handshake_timeout_s).start()
        self._runners = [data_runner, ops_runner, admin_runner]
        self.data_port = data_sock.getsockname()[1]
        self.ops_port = ops_sock.getsockname()[1]
        self.admin_port = admin_sock.getsockname()[1]
        await self.soc.start()
        if self.push is not None:
            await self.push.start()
        self._tasks = [asyncio.create_task(self._maintain()),
                       asyncio.create_task(self._rotate_upstreams())]
        observe_handshakes(self.ssl_context, self._handshake_failed)
        log.info("data plane on %s:%d (mTLS), ops plane on %s:%d", self.config.data.host,
                 self.data_port, self.config.ops.host, self.ops_port)

    def _handshake_failed(self, reason: str) -> None:
        self.metrics.tls_handshake_failures.labels(reason).inc()
        if reason in ("revoked", "unknown-ca"):
            # D12: a revoked certificate or a foreign CA knocking.
            self.soc.emit("tls-handshake-refused", "warning", new_incident_id(), reason=reason)

    async def _follow_state(self) -> None:
        """D8: what another replica revoked or disabled, within a cycle. Shared
        state that cannot be read for longer than its bound fails closed: the
        data plane refuses with 503 and /readyz says why, until it is read."""
        try:
            await asyncio.to_thread(self.credentials.follow)
        except Exception:  # the database is away: keep the last view, within the bound
            log.warning("shared state not readable", exc_info=True)
        stale_s = time.monotonic() - self.credentials.followed_at
        self.metrics.state_staleness_seconds.set(stale_s)
        shared = self.config.state_url is not None and self.config.state_url.startswith(
            ("postgresql://", "postgres://"))
        self.data_plane.state_stale = shared and stale_s > self.config.state_max_staleness_s

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL_S)
            try:
                budget = self.config.limits.memory_budget_mb * 1024 * 1024
                self.data_plane.over_memory_budget = rss_bytes() > budget
                await self._follow_state()
                self.credentials.maintain()
                await self.breakglass.maintain()
                now = time.monotonic()
                if now - self._last_usage_flush >= USAGE_FLUSH_S:
                    await asyncio.to_thread(self.usage.flush)
                    await asyncio.to_thread(self.usage.prune)
                    self._last_usage_flush = now
                    if self.audit_pruner is not None:  # D10: raw events once rolled up
                        await asyncio.to_thread(self.audit_pruner.prune)
            except Exception:  # keep serving; the next round tries again
                log.exception("credential maintenance failed")

    async def _rotate_upstreams(self) -> None:
        """Scheduled rotation of the service credentials (by age, policy)."""
        while True:
            try:
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
        both = self.vault_master.with_new_version()
        write_private(key_file, both.to_text().encode())
        count = self.vault.rekey(both)
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
        return {"kid": kid, "retired": retired}

    async def stop(self) -> None:
        forget_handshakes(self.ssl_context)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.soc.close()
        if self.push is not None:
            await self.push.stop()
            self.outbox.close()
        self.credentials.maintain()  # flush last-seen
        for runner in self._runners:
            await runner.cleanup()
        await self.upstreams.close()
        self.audit.close()
        self.store.close()
        self.vault.close()
        self.usage.close()
