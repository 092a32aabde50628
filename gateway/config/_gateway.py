"""Typed, frozen configuration (``gateway serve --config FILE``).

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
from gateway.core.catalog import UPSTREAMS
from gateway.errors import ConfigError
from gateway.logs import LOG_FORMATS

SECONDS = 1.0
DEFAULT_LIMITS = EdgeLimits()
MiB = 1024 * 1024
DEFAULT_RAW_RETENTION_DAYS = 90.0
# The data listener's HTTP server ([gateway] http_server): "lean" is
# gateway.edge._lean (httptools), "aiohttp" aiohttp's own server.
HTTP_SERVERS = ("lean", "aiohttp")
DEFAULT_HTTP_SERVER = "lean"


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
class LogConfig:
    """``[log]``: the process log's format (gateway.logs: ``text`` on
    stderr, ``json`` on stdout) and the access log (one line per data-plane
    request, logger ``gateway.access``; off by default). Read at start."""

    format: str = "text"
    access: bool = False


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
    def from_toml(cls, path: Path) -> GatewayConfig:
        try:
            with path.open("rb") as fh:
                doc = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: config file not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        return cls.from_mapping(doc, base=path.parent, source=str(path))

    @classmethod
    def from_mapping(cls, doc: Mapping[str, Any], *, base: Path, source: str) -> GatewayConfig:
        r = _Reader(doc, base, source)
        upstreams: dict[str, Upstream] = {}
        raw_up = r.table("upstreams")
        for name in UPSTREAMS:
            if name not in raw_up:
                raise ConfigError(f"{source}: upstreams.{name}: is required")
        for name in raw_up:
            if name not in UPSTREAMS:
                raise ConfigError(f"{source}: upstreams.{name}: unknown upstream "
                                  f"(known: {', '.join(UPSTREAMS)})")
            u = _Reader(raw_up[name], base, source, f"upstreams.{name}.")
            url = u.text("url")
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"{source}: upstreams.{name}.url: must be http(s)://")
            upstreams[name] = Upstream(
                name, url.rstrip("/"), u.opt_path("ca"),
                u.number("timeout_s", 10.0), u.number("connect_timeout_s", 2.0),
                int(u.number("max_response_bytes", 8 * MiB)), int(u.number("pool_size", 128)),
                int(u.number("breaker_failures", 5)), u.number("breaker_open_s", 5.0),
                _credential_scheme(u._get("credential"), f"{source}: upstreams.{name}"),
                u.number("queue_timeout_s", 2.0))
        ca = None
        if r._get("ca") is not None:
            c = _Reader(r.table("ca"), base, source, "ca.")
            ca = CaConfig(c.path("cert"), c.path("key"),
                          c.number("client_lifetime_days", 30), c.number("max_lifetime_days", 90),
                          c.number("crl_next_update_s", 24 * 3600))
        vault = VaultConfig()
        if r._get("vault") is not None:
            v = _Reader(r.table("vault"), base, source, "vault.")
            other_team = v._get("approver_other_team")
            vault = VaultConfig(
                v.opt_path("key_file"), str(v._get("key_env") or "GATEWAY_VAULT_KEY"),
                v.number("upstream_max_age_days", 90), v.number("rotation_grace_s", 10.0),
                v.number("breakglass_max_duration_s", 4 * 3600),
                v.number("breakglass_emergency_duration_s", 30 * 60),
                True if other_team is None else bool(other_team))
        audit = AuditConfig()
        if r._get("audit") is not None:
            a = _Reader(r.table("audit"), base, source, "audit.")
            unknown = set(r.table("audit")) - {
                "checkpoint_every", "checkpoint_interval_s", "segment_max_mb",
                "segment_max_age_h", "raw_retention_days", "fleet_checkpoint_interval_s"}
            if unknown:
                raise ConfigError(f"{source}: audit.{sorted(unknown)[0]}: unknown setting")
            audit = AuditConfig(
                int(a.number("checkpoint_every", 1000)), a.number("checkpoint_interval_s", 60),
                int(a.number("segment_max_mb", 64) * MiB),
                a.number("segment_max_age_h", 24) * 3600, _retention_days(a),
                a.number("fleet_checkpoint_interval_s", 60))
        accounts_doc = r._get("accounts") or {}
        if not isinstance(accounts_doc, Mapping) or not all(
                isinstance(v, str) and v in UPSTREAMS for v in accounts_doc.values()):
            raise ConfigError(f"{source}: accounts: must map account names to upstream names")
        webhook = r._get("soc.webhook")
        endpoints = r._get("push.endpoints") or {}
        if not isinstance(endpoints, Mapping) or not all(
                isinstance(v, str) and v.startswith("https://") for v in endpoints.values()):
            raise ConfigError(f"{source}: push.endpoints: must map tenants to https:// URLs")
        limits = EdgeLimits()
        if r._get("limits") is not None:
            lr = _Reader(r.table("limits"), base, source, "limits.")
            unknown = set(r.table("limits")) - set(EdgeLimits.__dataclass_fields__)
            if unknown:
                raise ConfigError(f"{source}: limits.{sorted(unknown)[0]}: unknown limit")
            values = {name: lr.number(name, float(getattr(limits, name)))
                      for name in EdgeLimits.__dataclass_fields__}
            limits = EdgeLimits(**{  # type: ignore[arg-type]
                k: (int(v) if isinstance(getattr(limits, k), int) else v)
                for k, v in values.items()})
        ops = r.listener("listeners.ops", Listener("127.0.0.1", 9102))
        if not _loopback(ops.host) and r._get("listeners.ops.allow_non_loopback") is not True:
            # The ops plane is plain HTTP: keep it off the network unless told.
            raise ConfigError(f"{source}: listeners.ops.host: {ops.host!r} is not a loopback "
                              "address (set allow_non_loopback = true to mean it)")
        state_url = _state_url(r, base, source)
        fleet = _fleet(r, source, state_url)
        if fleet.role == "data" and ca is not None:
            # SECURITY: the CA key signs certificates and CRLs; it belongs to
            # the control plane, not to the replicas facing partners.
            raise ConfigError(f"{source}: ca: a data-plane replica holds no CA key "
                              "(the control plane signs; remove [ca] here)")
        return cls(
            trust_domain=r.text("gateway.trust_domain"),
            tenants_dir=r.path("gateway.tenants_dir"),
            relations=r.path("gateway.relations"),
            data_dir=r.path("gateway.data_dir"),
            server_cert=r.path("tls.cert"),
            server_key=r.path("tls.key"),
            trust_bundle=r.path("tls.trust_bundle"),
            data=r.listener("listeners.data", Listener("127.0.0.1", 8443)),
            ops=ops,
            admin=r.listener("listeners.admin", Listener("127.0.0.1", 8444)),
            ca=ca,
            vault=vault,
            audit=audit,
            soc_file=r.opt_path("soc.file"),
            soc_webhook=str(webhook) if webhook else None,
            soc_syslog=_syslog_url(r._get("soc.syslog"), source),
            accounts=dict(accounts_doc),
            push_cert=r.opt_path("push.cert"),
            push_key=r.opt_path("push.key"),
            push_endpoints=dict(endpoints),
            push_max_pending_records=int(r.number("push.max_pending_records", 5_000_000)),
            push_max_body_bytes=int(r.number("push.max_body_bytes", 256 * MiB)),
            push_lease_s=r.number("push.lease_s", 60.0),
            limits=limits,
            upstreams=upstreams,
            assertion_lifetime_s=int(r.number("gateway.assertion_lifetime_s", 300)),
            signing_publish_ahead_s=r.number("gateway.signing_publish_ahead_s", 60),
            rotation_overlap_s=r.number("gateway.rotation_overlap_s", 24 * 3600),
            health_interval_s=r.number("gateway.health_interval_s", 5.0),
            drain_timeout_s=r.number("gateway.drain_timeout_s", 20.0),
            event_loop=_event_loop(r._get("gateway.event_loop"), source),
            http_server=_http_server(r._get("gateway.http_server"), source),
            state_url=state_url,
            state_max_staleness_s=r.number("state.max_staleness_s", 5.0),
            fleet=fleet,
            log=_log(r, source),
            source=source,
        )


ROLES = ("all", "control", "data")
EVENT_LOOPS = ("auto", "uvloop", "asyncio")


def _event_loop(value: Any, source: str) -> str:
    """``[gateway] event_loop``: "auto" (the default: uvloop when installed,
    else asyncio), "uvloop" (refused at start if it is not installed) or
    "asyncio"."""
    if value is None:
        return "auto"
    if value not in EVENT_LOOPS:
        raise ConfigError(f"{source}: gateway.event_loop: must be one of "
                          f"{', '.join(EVENT_LOOPS)} (got {value!r})")
    return str(value)


def _http_server(value: Any, source: str) -> str:
    """``[gateway] http_server``: "lean" or "aiohttp" (DEFAULT_HTTP_SERVER
    when absent)."""
    if value is None:
        return DEFAULT_HTTP_SERVER
    if value not in HTTP_SERVERS:
        raise ConfigError(f"{source}: gateway.http_server: must be one of "
                          f"{', '.join(HTTP_SERVERS)} (got {value!r})")
    return str(value)


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


def _fleet(r: _Reader, source: str, state_url: str | None) -> FleetConfig:
    if r._get("fleet") is None:
        return FleetConfig(replica_id=_default_replica_id("all"))
    unknown = set(r.table("fleet")) - {"role", "replica_id", "heartbeat_interval_s"}
    if unknown:
        raise ConfigError(f"{source}: fleet.{sorted(unknown)[0]}: unknown setting")
    role = r._get("fleet.role") or "all"
    if role not in ROLES:
        raise ConfigError(f"{source}: fleet.role: must be one of {', '.join(ROLES)}")
    replica_id = r._get("fleet.replica_id") or _default_replica_id(role)
    if not isinstance(replica_id, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}",
                                                           replica_id):
        raise ConfigError(f"{source}: fleet.replica_id: letters, digits, '.', '_' and '-', "
                          "at most 63")
    if role != "all" and not (state_url or "").startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"{source}: fleet.role: {role} is one part of a fleet, which shares "
                          "its state: set [state] url = \"postgresql://...\"")
    interval = r.number("fleet.heartbeat_interval_s", 1.0)
    if not 0.05 <= interval <= 60:
        raise ConfigError(f"{source}: fleet.heartbeat_interval_s: between 0.05 and 60")
    return FleetConfig(role=role, replica_id=replica_id, heartbeat_interval_s=interval)


def _log(r: _Reader, source: str) -> LogConfig:
    if r._get("log") is None:
        return LogConfig()
    table = r.table("log")
    unknown = set(table) - {"format", "access"}
    if unknown:
        raise ConfigError(f"{source}: log.{sorted(unknown)[0]}: unknown setting")
    log_format = table.get("format", "text")
    if log_format not in LOG_FORMATS:
        raise ConfigError(f"{source}: log.format: must be one of {', '.join(LOG_FORMATS)} "
                          f"(got {log_format!r})")
    access = table.get("access", False)
    if not isinstance(access, bool):
        raise ConfigError(f"{source}: log.access: must be true or false (got {access!r})")
    return LogConfig(log_format, access)


def _default_replica_id(role: str) -> str:
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{role}"


def _state_url(r: _Reader, base: Path, source: str) -> str | None:
    if r._get("state") is None:
        return None
    unknown = set(r.table("state")) - {"url", "max_staleness_s"}
    if unknown:
        raise ConfigError(f"{source}: state.{sorted(unknown)[0]}: unknown setting")
    url = r._get("state.url")
    if url is None:
        return None
    if not isinstance(url, str):
        raise ConfigError(f"{source}: state.url: must be a string")
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        return "sqlite:///" + str(path if path.is_absolute() else (base / path).resolve())
    if url.startswith(("postgresql://", "postgres://")):
        return url
    raise ConfigError(f"{source}: state.url: must be sqlite:///PATH or postgresql://...")


def _retention_days(a: _Reader) -> float:
    value = a._get("raw_retention_days")
    if value is None:
        return DEFAULT_RAW_RETENTION_DAYS
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise a._err("raw_retention_days", "must be a number of days >= 0 (0: keep all)")
    return float(value)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _credential_scheme(value: Any, where: str) -> str:
    if value is None:
        return "bearer"
    if value not in ("bearer", "api-key", "basic", "mtls"):
        raise ConfigError(f"{where}.credential: must be bearer, api-key, basic or mtls")
    return str(value)


def _syslog_url(value: Any, source: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith(("udp://", "tcp://")) \
            or value.rsplit(":", 1)[-1].isdigit() is False:
        raise ConfigError(f"{source}: soc.syslog: must be udp://HOST:PORT or tcp://HOST:PORT")
    return value


class _Reader:
    def __init__(self, doc: Any, base: Path, source: str, prefix: str = "") -> None:
        if not isinstance(doc, Mapping):
            raise ConfigError(f"{source}: {prefix.rstrip('.')}: must be a table")
        self.doc, self.base, self.source, self.prefix = doc, base, source, prefix

    def _get(self, dotted: str) -> Any:
        node: Any = self.doc
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return node

    def _err(self, key: str, what: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.prefix}{key}: {what}")

    def table(self, key: str) -> Mapping[str, Any]:
        value = self._get(key)
        if not isinstance(value, Mapping):
            raise self._err(key, "is required (a table)")
        return value

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str) or not value:
            raise self._err(key, "is required (a non-empty string)")
        return value

    def number(self, key: str, default: float) -> float:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise self._err(key, "must be a positive number")
        return float(value)

    def opt_path(self, key: str) -> Path | None:
        return None if self._get(key) is None else self.path(key)

    def path(self, key: str) -> Path:
        value = self._get(key)
        if not isinstance(value, str) or not value:
            raise self._err(key, "is required (a path)")
        p = Path(value)
        return p if p.is_absolute() else (self.base / p)

    def listener(self, key: str, default: Listener) -> Listener:
        value = self._get(key)
        if value is None:
            return default
        sub = _Reader(value, self.base, self.source, f"{self.prefix}{key}.")
        host = sub._get("host") or default.host
        port = sub._get("port")
        port = default.port if port is None else port
        if not isinstance(host, str) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise self._err(key, "needs host (string) and port (0-65535)")
        return Listener(host, port)
