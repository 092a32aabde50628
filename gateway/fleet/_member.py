"""One replica's part in the fleet (see the package's docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
from typing import Protocol

from gateway.audit import (
    AuditKeys,
    AuditShipper,
    ChainedAuditLog,
    fleet_event,
    sign_fleet_checkpoint,
)
from gateway.config import GatewayConfig
from gateway.core.relations.index import RelationIndex
from gateway.dataplane import DataPlane
from gateway.errors import ConfigError
from gateway.files import load_mapped, write_private
from gateway.metrics import GatewayMetrics
from gateway.pki import Credentials
from gateway.state import (
    AuditTables,
    ChangeListener,
    Heartbeats,
    LeaderLock,
    RelationPublication,
)
from gateway.tasks import cancel_and_wait

log = logging.getLogger("gateway.server")
FOLLOW_INTERVAL_S = 0.5  # the poll behind NOTIFY, which is not durable
AUDIT_SHIP_S = 1.0  # a replica ships its new audit lines this often


def relations_digest(index: RelationIndex) -> str:
    """SHA-256 of the snapshot's bytes: its name in the fleet."""
    return hashlib.sha256(index.snapshot.buffer).hexdigest()


class FleetHost(Protocol):
    """What a fleet member asks of the gateway it belongs to."""

    config: GatewayConfig
    metrics: GatewayMetrics
    credentials: Credentials
    data_plane: DataPlane
    audit: ChainedAuditLog
    audit_keys: AuditKeys
    replica_id: str
    role: str
    draining: bool

    @property
    def relations(self) -> RelationIndex: ...

    @property
    def relations_digest(self) -> str: ...

    def replace_relations(self, index: RelationIndex, digest: str) -> None: ...

    def addresses(self) -> tuple[str | None, str, str | None]:
        """(data, ops, admin) as ``host:port``; None for a plane not served."""
        ...

    async def follow_state(self) -> None: ...


class FleetMember:
    """Opened with the gateway (the lock is tried at once, so the control
    duties know where they run before anything starts); :meth:`start` runs
    its tasks, :meth:`leave` says goodbye (draining), :meth:`close` ends it."""

    def __init__(self, host: FleetHost, dsn: str) -> None:
        self.host = host
        self.dsn = dsn
        role = host.config.fleet.role
        self.lock = LeaderLock(dsn) if role != "data" else None
        self.leading = self.lock is not None and self.lock.poll()
        self.heartbeats = Heartbeats(dsn)
        self.relations = RelationPublication(dsn)
        self.shipper: AuditShipper | None = None
        self._changed: asyncio.Event | None = None
        self._listener: ChangeListener | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._last_fleet_checkpoint = time.monotonic()

    # -- the life of a member ---------------------------------------------------
    async def start(self) -> None:
        host = self.host
        loop = asyncio.get_running_loop()
        changed = self._changed = asyncio.Event()

        def wake() -> None:  # from the listener's thread
            with contextlib.suppress(RuntimeError):  # the loop closed: stopping
                loop.call_soon_threadsafe(changed.set)

        self._listener = ChangeListener(self.dsn, wake)
        self._listener.start()
        # The chain is shipped after the local write (format §13).
        self.shipper = AuditShipper(host.audit.path, host.replica_id, AuditTables(self.dsn))
        await asyncio.to_thread(self.shipper.publish_keys, host.audit_keys.document())
        await self.publish_relations()
        self._tasks = [asyncio.create_task(self._follow()), asyncio.create_task(self._beat()),
                       asyncio.create_task(self._ship_audit())]

    async def leave(self) -> None:
        """Draining: the fleet stops counting this replica at once."""
        with contextlib.suppress(Exception):  # the row ages out anyway
            await asyncio.to_thread(self._beat_once)

    async def close(self) -> None:
        await cancel_and_wait(self._tasks)
        if self._listener is not None:
            await asyncio.to_thread(self._listener.stop)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.heartbeats.forget, self.host.replica_id)
        self.heartbeats.close()
        if self.lock is not None:
            self.lock.release()
        self.relations.close()

    async def ship_last(self) -> None:
        """After the audit log closed: its last lines, the closing checkpoint
        included."""
        if self.shipper is None:
            return
        try:
            await asyncio.to_thread(self.shipper.ship)
        except Exception:
            log.warning("audit shipping at stop failed; shipped at the next start",
                        exc_info=True)
        self.shipper.tables.close()

    def publish_audit_keys(self) -> None:
        """After an audit key rotation: verifiers of the fleet find it there."""
        if self.shipper is not None:
            self.shipper.publish_keys(self.host.audit_keys.document())

    # -- following the shared state -----------------------------------------------
    async def _follow(self) -> None:
        """At once on a notification (the writer's NOTIFY, or the listener's
        reconnect), and every cycle anyway."""
        assert self._changed is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), FOLLOW_INTERVAL_S)
            self._changed.clear()
            await self.host.follow_state()
            try:
                await self._follow_relations()
            except Exception:  # the database away, or a bad snapshot: keep the live one
                log.warning("relation snapshot not followed", exc_info=True)

    # -- the heartbeat and the control lock ---------------------------------------
    async def _beat(self) -> None:
        """Hold or take the control lock, write this replica's row, count the
        live data-plane replicas and divide each tenant's rate among them."""
        host = self.host
        interval = host.config.fleet.heartbeat_interval_s
        while True:
            try:
                was = self.leading
                if self.lock is not None:
                    self.leading = await asyncio.to_thread(self.lock.poll)
                host.metrics.control_plane_leader.set(1 if self.leading else 0)
                if self.leading and not was:
                    log.warning("%s now runs the control duties", host.replica_id)
                    await asyncio.to_thread(host.credentials.refresh)  # sign the CRLs now
                    await self.publish_relations()
                elif was and not self.leading:
                    log.warning("%s lost the control lock: control duties stop here",
                                host.replica_id)
                live = await asyncio.to_thread(self._beat_once)
                host.metrics.replicas_live.set(live)
                host.data_plane.quotas.share(live)
            except Exception:  # the database is away: keep the last share
                log.warning("fleet heartbeat failed", exc_info=True)
            await asyncio.sleep(interval)

    def _beat_once(self) -> int:
        """Write this replica's heartbeat; the live data-plane replicas (a
        heartbeat within three intervals)."""
        host = self.host
        data, ops, admin = host.addresses()
        self.heartbeats.beat(replica_id=host.replica_id, role=host.role,
                             host=socket.gethostname(), pid=os.getpid(), data=data, ops=ops,
                             admin=admin, draining=host.draining, leader=self.leading)
        return self.heartbeats.live_data_replicas(3 * host.config.fleet.heartbeat_interval_s)

    # -- the audit trail ------------------------------------------------------------
    async def _ship_audit(self) -> None:
        """Ship the new lines of the chain; record the newest fleet checkpoint
        in it; where the control duties run, sign the next fleet checkpoint
        over every replica's head (format §13)."""
        assert self.shipper is not None
        shipper, host = self.shipper, self.host
        while True:
            await asyncio.sleep(AUDIT_SHIP_S)
            try:
                await asyncio.to_thread(shipper.ship)
                latest = await asyncio.to_thread(shipper.tables.latest_fleet_checkpoint)
                if latest is not None and latest[0] > shipper.seen_fleet:
                    host.audit.record(fleet_event(*latest))
                    shipper.seen_fleet = latest[0]
                interval = host.config.audit.fleet_checkpoint_interval_s
                if self.leading and time.monotonic() - self._last_fleet_checkpoint >= interval:
                    self._last_fleet_checkpoint = time.monotonic()
                    await asyncio.to_thread(
                        sign_fleet_checkpoint, shipper.tables, host.audit_keys.key,
                        host.audit_keys.kid, time.time())
            except Exception:  # the database is away: the local file keeps everything
                log.warning("audit shipping failed", exc_info=True)

    # -- the relation snapshot --------------------------------------------------------
    async def publish_relations(self) -> None:
        """The control duties: make this process's snapshot the fleet's."""
        if not self.leading:
            return
        index, digest = self.host.relations, self.host.relations_digest
        published = await asyncio.to_thread(
            self.relations.publish, digest, bytes(index.snapshot.buffer), len(index))
        if published:
            log.info("published the relation snapshot %s (%d relations) to the fleet",
                     digest[:12], len(index))

    async def _follow_relations(self) -> None:
        """A replica that does not lead: fetch, verify and load the snapshot
        the control plane published, in worker threads, then swap it in (the
        next request decides with it; open connections too)."""
        if self.leading:
            return
        pointer = await asyncio.to_thread(self.relations.pointer)
        if pointer is None:
            return
        self.host.metrics.relations_snapshot_age_seconds.set(pointer.age_s)
        if pointer.digest == self.host.relations_digest:
            return
        index = await asyncio.to_thread(self._snapshot_file, pointer.digest)
        if index is None:  # replaced between the two reads: the next cycle
            return
        old = [self.host.relations]
        self.host.replace_relations(index, pointer.digest)
        log.info("relation snapshot %s (%d relations) from the control plane",
                 pointer.digest[:12], len(index))
        await asyncio.to_thread(old.clear)  # freeing a large one takes a while

    def _snapshot_file(self, digest: str) -> RelationIndex | None:
        """The published snapshot ``digest``, mapped from its file under
        data_dir/relations/ (content-addressed, written once, never
        rewritten: the workers of one host map the same file and share its
        pages); fetched from the database and verified first when this host
        does not have it yet. A file whose bytes do not match its name is
        refused (and replaced by a fetched copy)."""
        path = self.host.config.data_dir / "relations" / f"{digest}.snap"
        if path.exists():
            index = load_mapped(path)
            if relations_digest(index) == digest:
                return index
            log.error("relation snapshot file %s does not match its digest; fetching it", path)
        body = self.relations.fetch(digest)
        if body is None:
            return None
        if hashlib.sha256(body).hexdigest() != digest:
            raise ConfigError(f"relation snapshot {digest[:12]}: its bytes do not match its "
                              "digest; keeping the live one")
        path.parent.mkdir(mode=0o700, exist_ok=True)
        write_private(path, body)  # atomic: a worker beside us maps the whole file or none
        del body
        index = load_mapped(path)
        for stale in path.parent.glob("*.snap"):
            if stale != path:  # a process still mapping it keeps its pages until it swaps
                stale.unlink(missing_ok=True)
        return index
