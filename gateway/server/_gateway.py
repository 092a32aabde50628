"""The gateway of one process: its collaborators assembled from the
configuration, the live tenants and relation feed (reloaded whole), its
start (gateway.server._planes, _duties) and its drain and stop."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.audit import (
    AuditKeys,
    AuditPruner,
    ChainedAuditLog,
    SecurityEvents,
    UsageLedger,
)
from gateway.canary import CanaryProber
from gateway.config import GatewayConfig
from gateway.core.catalog import default_route_table
from gateway.core.relations.index import RelationIndex
from gateway.dataplane import DataPlane
from gateway.edge import (
    CallerResolver,
    ConnectionBook,
    Peers,
    forget_handshakes,
    rss_bytes,
)
from gateway.errors import ConfigError
from gateway.files import load_relations
from gateway.fleet import FleetMember, relations_digest
from gateway.metrics import GatewayMetrics
from gateway.pki import AssertionSigner, Credentials, IssuancePolicy, KeyRing
from gateway.push import Outbox, PostgresOutbox, PushService, open_outbox
from gateway.retention import Retention
from gateway.server._assembly import load_master_keys, syslog_sink, with_application_name
from gateway.server._duties import maintain, rotate_upstreams
from gateway.server._keys import OUTBOX_KEY_ID, PSEUDONYM_KEY_ID, DataKeys, MasterKeyRotation
from gateway.server._planes import open_planes
from gateway.state import (
    SqliteStore,
    open_store,
)
from gateway.tasks import cancel_and_wait
from gateway.tenants import TenantRegistry, check_reach, load_tenants
from gateway.tls import client_context
from gateway.upstream import UpstreamPool
from gateway.vault import (
    BreakGlass,
    BreakGlassPolicy,
    Lockbox,
    UpstreamCredentials,
    VaultLocked,
    identity_uri,
    open_vault,
)

log = logging.getLogger("gateway.server")


class Gateway:
    # Built in __init__; named here because callables handed to earlier
    # collaborators refer to them (the pool and the vault side need each other).
    breakglass: BreakGlass
    upstream_creds: UpstreamCredentials
    # Made by start() (gateway.server._planes).
    connections: ConnectionBook  # the data plane's connection book
    ops_runner: web.BaseRunner

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
        master = load_master_keys(config)
        try:
            self.vault = open_vault(state_url, config.data_dir / "vault.db", master)
        except VaultLocked as exc:
            raise ConfigError(f"{config.source}: vault: {exc}") from exc
        self.rekeying = MasterKeyRotation(self.vault, master, config.vault.key_file)
        self.data_keys = DataKeys(self.vault, makes_keys=config.fleet.role != "data")
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
        self.rss = rss_bytes  # the memory watch's reading (tests give it another)
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
                                  syslog=syslog_sink(config.soc_syslog))
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
            usage=self.usage, pseudonyms=self.data_keys.pseudonymiser,
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
        self.runners: list[web.BaseRunner] = []
        self._tasks: list[asyncio.Task[None]] = []
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
        if self.role != "data":  # made here, so a data replica finds it (D9)
            self.data_keys.get(PSEUDONYM_KEY_ID)
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

    def _push_service(self, config: GatewayConfig) -> PushService | None:
        """Pushed-data delivery needs the gateway's own client certificate."""
        if config.push_cert is None or config.push_key is None:
            return None
        data_key = self.data_keys.get(OUTBOX_KEY_ID)
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
        await open_planes(self, data_sock, ops_sock, admin_sock)
        cfg = self.config
        await self.soc.start()
        if self.push is not None and self.serves_data:
            await self.push.start()
        self._tasks = [asyncio.create_task(maintain(self)),
                       asyncio.create_task(rotate_upstreams(self))]
        if self.canary is not None and self.role == "all":  # worker 0 of --workers N
            self._tasks.append(asyncio.create_task(self.canary.run()))
        self._show_relations(self._relations)
        if self.fleet is not None:
            await self.fleet.start()
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
        await asyncio.gather(*(runner.cleanup() for runner in self.runners))
        await cancel_and_wait(self._tasks)
        if self.fleet is not None:
            await self.fleet.close()
        await self.soc.close()
        if self.push is not None:
            await self.push.stop()
            self.outbox.close()
        if self._retention_outbox is not None:
            self._retention_outbox.close()
        # The last uses noted (the loop serves nothing more: written here).
        self.credentials.flush_seen(self.credentials.take_seen())
        await self.ops_runner.cleanup()  # last: /readyz said "draining" all along
        await self.upstreams.close()
        self.audit.close()
        if self.fleet is not None:
            await self.fleet.ship_last()
        self.store.close()
        self.vault.close()
        self.usage.close()
