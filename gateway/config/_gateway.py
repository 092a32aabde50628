"""Typed, frozen configuration (``gateway serve --config FILE``): the file
is validated against its schema (``_schema``), then the checks no single key
can make are made here and the runtime objects built.

Relative paths are resolved against the directory of the config file. Every
error names the file, the key and what is wrong, at start-up.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gateway.config._limits import EdgeLimits
from gateway.config._schema import (
    DEFAULT_CONSULTATION_REGISTER_DAYS,
    DEFAULT_DEAD_LETTER_PAYLOAD_DAYS,
    DEFAULT_DISABLED_PRINCIPAL_DAYS,
    DEFAULT_HTTP_SERVER,
    DEFAULT_NOTIFICATION_DAYS,
    HTTP_SERVERS,
    FleetTable,
    GatewayFile,
    UpstreamTable,
)
from gateway.config._validate import Loc, validate, with_environment
from gateway.core.catalog import UPSTREAMS
from gateway.core.lockbox import GROUP_PREFIX, GROUPS, reach_problem
from gateway.errors import ConfigError

SECONDS = 1.0
DEFAULT_LIMITS = EdgeLimits()
MiB = 1024 * 1024
DEFAULT_RAW_RETENTION_DAYS = 90.0
__all__ = ["DEFAULT_HTTP_SERVER", "HTTP_SERVERS"]


@dataclass(frozen=True, slots=True)
class Listener:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    url: str
    ca: Path | None = None
    timeout_s: float = 10 * SECONDS
    connect_timeout_s: float = 2 * SECONDS
    max_response_bytes: int = 8 * MiB
    pool_size: int = 128
    breaker_failures: int = 5  # consecutive failures that open the circuit
    breaker_open_s: float = 5.0  # then one probe after this long
    credential: str = "bearer"  # how the shared system takes the gateway's credential
    queue_timeout_s: float = 2.0  # waiting for a pool slot (fair queuing) before 503


@dataclass(frozen=True, slots=True)
class CaConfig:
    """The gateway's own CA: it issues tenant certificates from CSRs."""

    cert: Path
    key: Path
    client_lifetime_days: float = 30
    max_lifetime_days: float = 90
    crl_next_update_s: float = 24 * 3600


@dataclass(frozen=True, slots=True)
class VaultConfig:
    """Where the vault's master key comes from (never the database)."""

    key_file: Path | None = None  # else the environment variable key_env
    key_env: str = "GATEWAY_VAULT_KEY"
    upstream_max_age_days: float = 90
    rotation_grace_s: float = 10.0
    breakglass_max_duration_s: float = 4 * 3600
    breakglass_emergency_duration_s: float = 30 * 60
    approver_other_team: bool = True


@dataclass(frozen=True, slots=True)
class LockboxConfig:
    """``[lockbox]`` (D7): whose data each privileged account can touch, and
    how long a reached tenant has to consent to a break-glass case."""

    ttl_s: float = 4 * 3600.0
    # account -> tenant ids and @groups (gateway.core.lockbox.GROUPS)
    reach: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """The audit log's checkpoints, segments and raw-event retention."""

    checkpoint_every: int = 1000  # events between signed checkpoints
    checkpoint_interval_s: float = 60.0  # or this long, whichever comes first
    segment_max_bytes: int = 64 * MiB  # seal the file at the first checkpoint past this
    segment_max_age_s: float = 24 * 3600.0  # ... or past this age
    raw_retention_days: float = DEFAULT_RAW_RETENTION_DAYS  # then sealed, rolled-up
    # segments are deleted; 0 = keep everything
    # A fleet: the control plane signs every replica's shipped head this often.
    fleet_checkpoint_interval_s: float = 60.0


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    """``[retention]`` (D8, D10): how long each kind of personal trace is kept
    before the control duties delete it (``gateway.retention``)."""

    dead_letter_payload_days: float = DEFAULT_DEAD_LETTER_PAYLOAD_DAYS
    disabled_principal_days: float = DEFAULT_DISABLED_PRINCIPAL_DAYS
    consultation_register_days: float = DEFAULT_CONSULTATION_REGISTER_DAYS
    notification_days: float = DEFAULT_NOTIFICATION_DAYS
    interval_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class LogConfig:
    """``[log]``: the process log's format (gateway.logs: ``text`` on
    stderr, ``json`` on stdout) and the access log (one line per data-plane
    request, logger ``gateway.access``; off by default). Read at start."""

    format: str = "text"
    access: bool = False


@dataclass(frozen=True, slots=True)
class CanaryConfig:
    """``[canary]``: the isolation canary prober (gateway.canary, D1, D12)."""

    enabled: bool = False
    interval_s: float = 60.0
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    trust_domain: str
    tenants_dir: Path
    relations: Path
    data_dir: Path
    server_cert: Path
    server_key: Path
    trust_bundle: Path
    data: Listener = Listener("127.0.0.1", 8443)
    ops: Listener = Listener("127.0.0.1", 9102)
    admin: Listener = Listener("127.0.0.1", 8444)
    ca: CaConfig | None = None
    vault: VaultConfig = VaultConfig()
    audit: AuditConfig = AuditConfig()
    soc_file: Path | None = None
    soc_webhook: str | None = None
    soc_syslog: str | None = None  # "udp://127.0.0.1:5514" or "tcp://..."
    # privileged account -> the upstream it belongs to
    accounts: Mapping[str, str] = field(default_factory=dict)
    lockbox: LockboxConfig = LockboxConfig()
    # Pushed data: the gateway's client certificate for deliveries,
    # endpoint overrides per tenant (else the tenant file's push_endpoint).
    push_cert: Path | None = None
    push_key: Path | None = None
    push_endpoints: Mapping[str, str] = field(default_factory=dict)
    push_max_pending_records: int = 5_000_000
    push_max_body_bytes: int = 256 * MiB
    # A fleet's replicas claim outbox parts under a lease this long, renewed
    # before each delivery; a replica that dies leaves its parts to the others
    # once it runs out.
    push_lease_s: float = 60.0
    limits: EdgeLimits = DEFAULT_LIMITS
    upstreams: Mapping[str, Upstream] = field(default_factory=dict)
    assertion_lifetime_s: int = 300
    signing_publish_ahead_s: float = 60 * SECONDS
    rotation_overlap_s: float = 24 * 3600 * SECONDS
    health_interval_s: float = 5 * SECONDS
    # On SIGTERM: requests in flight get this long to finish (drain).
    drain_timeout_s: float = 20 * SECONDS
    # The event loop ("auto": uvloop when it is installed, else asyncio).
    event_loop: str = "auto"
    # The data listener's HTTP server: "lean" (httptools, gateway.edge._lean)
    # or "aiohttp" (aiohttp's own server, as the admin and ops planes').
    http_server: str = DEFAULT_HTTP_SERVER
    # The state backend: None is the embedded SQLite file under data_dir;
    # "sqlite:///ABSOLUTE-PATH" or "postgresql://..." ([state] url).
    state_url: str | None = None
    # Shared state unread for longer than this: requests are refused (503).
    state_max_staleness_s: float = 5.0
    # The fleet ([fleet]): what this process is, and its name among replicas.
    fleet: FleetConfig = field(default_factory=lambda: FleetConfig())
    log: LogConfig = LogConfig()
    retention: RetentionConfig = RetentionConfig()
    canary: CanaryConfig = CanaryConfig()
    source: str = "<memory>"

    @property
    def local_dir(self) -> Path:
        """Where this replica's own files go (its audit chain and key, usage
        ledger, outbox file): data_dir for a process on its own; in a fleet
        (shared state), data_dir/replicas/<replica_id>, so replicas sharing
        a data_dir (the workers of one host) never share a file."""
        if self.shared_state:
            return self.data_dir / "replicas" / self.fleet.replica_id
        return self.data_dir

    def for_worker(self, index: int) -> GatewayConfig:
        """Worker ``index`` of ``serve --workers N``: its replica id and role
        (FleetConfig.with_worker), the data port shared with the other
        workers (SO_REUSEPORT), its own ops port (the configured one plus
        ``index``, so each worker's metrics can be scraped) and its own files."""
        fleet = self.fleet.with_worker(index)
        ops = Listener(self.ops.host, self.ops.port + index if self.ops.port else 0)
        return replace(self, fleet=fleet, ops=ops)

    @property
    def shared_state(self) -> bool:
        """State in PostgreSQL, shared by the replicas of a fleet."""
        return self.state_url is not None and self.state_url.startswith(
            ("postgresql://", "postgres://"))

    @classmethod
    def from_toml(cls, path: Path, environ: Mapping[str, str] | None = None) -> GatewayConfig:
        """The config in ``path``; ``environ`` (``gateway serve`` and ``gateway
        config check`` pass the process's) may override its keys with
        ``GATEWAY_<TABLE>__<KEY>`` variables."""
        try:
            with path.open("rb") as fh:
                doc = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: config file not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        return cls.from_mapping(doc, base=path.parent, source=str(path), environ=environ)

    @classmethod
    def from_mapping(cls, doc: Mapping[str, Any], *, base: Path, source: str,
                     environ: Mapping[str, str] | None = None) -> GatewayConfig:
        origins: dict[Loc, str] = {}
        if environ is not None:
            doc, origins = with_environment(GatewayFile, doc, environ)
        f = validate(GatewayFile, doc, source, origins)
        return _build(f, _Paths(base), source)


class _Paths:
    """Relative paths are read against the config file's directory."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def __call__(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else self.base / p

    def opt(self, value: str | None) -> Path | None:
        return None if value is None else self(value)


def _lockbox(f: GatewayFile, source: str) -> LockboxConfig:
    """``[lockbox]``: every account named in ``reach`` is declared in
    ``[accounts]``, and every group is known; tenant ids are checked against
    the tenant files at start (``gateway.server``)."""
    for account, entries in f.lockbox.reach.items():
        if account not in f.accounts:
            raise ConfigError(f"{source}: lockbox.reach.{account}: no such account in "
                              "[accounts]")
        for entry in entries:
            if entry.startswith(GROUP_PREFIX) and entry[1:] not in GROUPS:
                raise ConfigError(f"{source}: lockbox.reach.{account}: "
                                  + str(reach_problem(entry, ())))
    return LockboxConfig(f.lockbox.ttl_s,
                         {a: tuple(e) for a, e in f.lockbox.reach.items()})


def _build(f: GatewayFile, path: _Paths, source: str) -> GatewayConfig:
    """The runtime config from a file that passed the schema, after the
    checks no single key can make."""
    upstreams: dict[str, Upstream] = {}
    for name in UPSTREAMS:
        u: UpstreamTable = getattr(f.upstreams, name)
        if not u.url.startswith(("http://", "https://")):
            raise ConfigError(f"{source}: upstreams.{name}.url: must be http(s)://")
        upstreams[name] = Upstream(
            name, u.url.rstrip("/"), path.opt(u.ca), u.timeout_s, u.connect_timeout_s,
            u.max_response_bytes, u.pool_size, u.breaker_failures, u.breaker_open_s,
            u.credential, u.queue_timeout_s)
    ca = None if f.ca is None else CaConfig(
        path(f.ca.cert), path(f.ca.key), f.ca.client_lifetime_days, f.ca.max_lifetime_days,
        f.ca.crl_next_update_s)
    v = f.vault
    vault = VaultConfig(path.opt(v.key_file), v.key_env, v.upstream_max_age_days,
                        v.rotation_grace_s, v.breakglass_max_duration_s,
                        v.breakglass_emergency_duration_s, v.approver_other_team)
    a = f.audit
    audit = AuditConfig(a.checkpoint_every, a.checkpoint_interval_s,
                        int(a.segment_max_mb * MiB), a.segment_max_age_h * 3600,
                        a.raw_retention_days, a.fleet_checkpoint_interval_s)
    for tenant, url in f.push.endpoints.items():
        if not url.startswith("https://"):
            raise ConfigError(f"{source}: push.endpoints.{tenant}: must be an https:// URL "
                              "(delivery is mTLS)")
    ops = Listener(f.listeners.ops.host, f.listeners.ops.port)
    if not _loopback(ops.host) and not f.listeners.ops.allow_non_loopback:
        # The ops plane is plain HTTP: keep it off the network unless told.
        raise ConfigError(f"{source}: listeners.ops.host: {ops.host!r} is not a loopback "
                          "address (set allow_non_loopback = true to mean it)")
    state_url = _state_url(f.state.url, path.base, source)
    fleet = _fleet(f.fleet, source, state_url)
    if fleet.role == "data" and ca is not None:
        # SECURITY: the CA key signs certificates and CRLs; it belongs to
        # the control plane, not to the replicas facing partners.
        raise ConfigError(f"{source}: ca: a data-plane replica holds no CA key "
                          "(the control plane signs; remove [ca] here)")
    if f.canary.enabled and (ca is None or fleet.role != "all"):
        # The prober's certificates are made in-process by the CA, and it asks
        # this process's own data listener: one process holding both.
        raise ConfigError(f"{source}: canary.enabled: the canary prober needs [ca] and "
                          "fleet role \"all\" (it issues its own certificates and probes "
                          "this process's data plane)")
    g = f.gateway
    return GatewayConfig(
        trust_domain=g.trust_domain,
        tenants_dir=path(g.tenants_dir),
        relations=path(g.relations),
        data_dir=path(g.data_dir),
        server_cert=path(f.tls.cert),
        server_key=path(f.tls.key),
        trust_bundle=path(f.tls.trust_bundle),
        data=Listener(f.listeners.data.host, f.listeners.data.port),
        ops=ops,
        admin=Listener(f.listeners.admin.host, f.listeners.admin.port),
        ca=ca,
        vault=vault,
        audit=audit,
        soc_file=path.opt(f.soc.file),
        soc_webhook=f.soc.webhook,
        soc_syslog=_syslog_url(f.soc.syslog, source),
        accounts=dict(f.accounts),
        lockbox=_lockbox(f, source),
        push_cert=path.opt(f.push.cert),
        push_key=path.opt(f.push.key),
        push_endpoints=dict(f.push.endpoints),
        push_max_pending_records=f.push.max_pending_records,
        push_max_body_bytes=f.push.max_body_bytes,
        push_lease_s=f.push.lease_s,
        limits=EdgeLimits(**f.limits.model_dump()),
        upstreams=upstreams,
        assertion_lifetime_s=g.assertion_lifetime_s,
        signing_publish_ahead_s=g.signing_publish_ahead_s,
        rotation_overlap_s=g.rotation_overlap_s,
        health_interval_s=g.health_interval_s,
        drain_timeout_s=g.drain_timeout_s,
        event_loop=g.event_loop,
        http_server=g.http_server,
        state_url=state_url,
        state_max_staleness_s=f.state.max_staleness_s,
        fleet=fleet,
        log=LogConfig(f.log.format, f.log.access),
        retention=RetentionConfig(**f.retention.model_dump()),
        canary=CanaryConfig(**f.canary.model_dump()),
        source=source,
    )


@dataclass(frozen=True)
class FleetConfig:
    """``[fleet]``: ``role`` is what this process runs: ``all`` (one process,
    the default: data plane, admin plane and the control duties), ``control``
    (the admin plane and the control duties: CRLs, key rotation, retirements,
    break-glass expiry, pruning; one of two instances is active, by a
    PostgreSQL advisory lock) or ``data`` (the data and ops planes only).
    ``replica_id`` names the replica in the heartbeat table, metrics and its
    audit chain (default: the host name and the role)."""

    role: str = "all"
    replica_id: str = ""
    heartbeat_interval_s: float = 1.0

    def with_worker(self, index: int) -> FleetConfig:
        """Worker ``index`` of ``serve --workers N``: worker 0 keeps the role,
        the others serve the data plane only; each its own replica id."""
        return FleetConfig(role=self.role if index == 0 else "data",
                           replica_id=f"{self.replica_id}-w{index}",
                           heartbeat_interval_s=self.heartbeat_interval_s)


def _fleet(t: FleetTable, source: str, state_url: str | None) -> FleetConfig:
    replica_id = t.replica_id or _default_replica_id(t.role)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", replica_id):
        raise ConfigError(f"{source}: fleet.replica_id: letters, digits, '.', '_' and '-', "
                          "at most 63")
    if t.role != "all" and not (state_url or "").startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"{source}: fleet.role: {t.role} is one part of a fleet, which "
                          "shares its state: set [state] url = \"postgresql://...\"")
    return FleetConfig(role=t.role, replica_id=replica_id,
                       heartbeat_interval_s=t.heartbeat_interval_s)


def _default_replica_id(role: str) -> str:
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{role}"


def _state_url(url: str | None, base: Path, source: str) -> str | None:
    if url is None:
        return None
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        return "sqlite:///" + str(path if path.is_absolute() else (base / path).resolve())
    if url.startswith(("postgresql://", "postgres://")):
        return url
    raise ConfigError(f"{source}: state.url: must be sqlite:///PATH or postgresql://...")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _syslog_url(value: str | None, source: str) -> str | None:
    if value is None:
        return None
    if not value.startswith(("udp://", "tcp://")) \
            or value.rsplit(":", 1)[-1].isdigit() is False:
        raise ConfigError(f"{source}: soc.syslog: must be udp://HOST:PORT or tcp://HOST:PORT")
    return value
