"""The schema of ``gateway.toml``: every table and key, its type, default,
unit and what SIGHUP does to it, written once. Loading validates a file
against it (``_validate``); docs/configuration.md and
docs/schema/gateway.schema.json are generated from it (``_reference``).

What one key cannot say alone (an ops listener off loopback, a data-plane
replica holding a CA key, a fleet role without shared state) is checked
after, in ``_gateway``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast, get_args

from pydantic import Field, create_model

from gateway.config._fields import (
    REREAD,
    FilePath,
    NonEmpty,
    Port,
    PositiveInt,
    PositiveNumber,
    Table,
    setting,
)
from gateway.config._limits import EdgeLimits
from gateway.core.catalog import UPSTREAMS
from gateway.logs import LOG_FORMATS

MiB = 1024 * 1024
# [retention] (D8, D10): dead letters keep their payload 30 days; a disabled
# principal stays 400 days, past the six-monthly access reviews; the
# consultation register 20 months (~610 days), the longest the report keeps a
# trace of use (its chapter VI: monthly usage for 20 months). Neither of the
# last two may be shorter than six months: a review must see them.
DEFAULT_DEAD_LETTER_PAYLOAD_DAYS = 30.0
DEFAULT_DISABLED_PRINCIPAL_DAYS = 400.0
DEFAULT_CONSULTATION_REGISTER_DAYS = 610.0
DEFAULT_NOTIFICATION_DAYS = 400.0
MIN_REVIEWED_DAYS = 183.0
if TYPE_CHECKING:
    UpstreamName = str
    LogFormat = str
else:  # the shared systems of the catalogue; the log formats gateway.logs writes
    UpstreamName = Literal[tuple(UPSTREAMS)]
    LogFormat = Literal[LOG_FORMATS]
# The data listener's HTTP server ([gateway] http_server): "lean" is
# gateway.edge._lean (httptools), "aiohttp" aiohttp's own server.
HttpServer = Literal["lean", "aiohttp"]
HTTP_SERVERS: tuple[str, ...] = get_args(HttpServer)
DEFAULT_HTTP_SERVER = "lean"


class GatewayTable(Table):
    trust_domain: NonEmpty = setting(doc="Client URI SANs are spiffe://<this>/tenant/<t>/<kind>/<name>")
    tenants_dir: FilePath = setting(doc="One TOML file per tenant (tenant files, below)",
                                sighup=REREAD)
    relations: FilePath = setting(doc="The relation feed (JSON) or a compiled snapshot",
                              sighup=REREAD)
    data_dir: FilePath = setting(doc="Signing keys, audit log, embedded state, outbox")
    assertion_lifetime_s: PositiveInt = setting(300, "Lifetime of the identity assertions "
                                            "sent to upstreams")
    signing_publish_ahead_s: PositiveNumber = setting(60.0, "A new signing key is published "
                                                  "this long before it signs")
    rotation_overlap_s: PositiveNumber = setting(24 * 3600.0, "Old and new signing key are "
                                             "both published this long after a rotation")
    health_interval_s: PositiveNumber = setting(5.0, "Upstream health probes "
                                            "(gateway_upstream_up, /readyz)")
    drain_timeout_s: PositiveNumber = setting(20.0, "On SIGTERM, requests in flight get this "
                                          "long to finish")
    event_loop: Literal["auto", "uvloop", "asyncio"] = setting(
        "auto", "auto: uvloop when installed, else asyncio; uvloop refuses to start "
        "without it")
    http_server: HttpServer = setting(
        DEFAULT_HTTP_SERVER, "The data listener's HTTP server: lean (httptools) or aiohttp")


class TlsTable(Table):
    cert: FilePath = setting(doc="The server certificate (PEM) of the mTLS listeners",
                         sighup=REREAD)
    key: FilePath = setting(doc="Its private key (PEM)", sighup=REREAD)
    trust_bundle: FilePath = setting(doc="CAs whose client certificates are accepted",
                                 sighup=REREAD)


class DataListener(Table):
    host: NonEmpty = setting("127.0.0.1", "Address of the data plane (mTLS, partners)")
    port: Port = setting(8443, "Its port (0: the kernel picks one)")


class AdminListener(Table):
    host: NonEmpty = setting("127.0.0.1", "Address of the admin plane (mTLS, security roles)")
    port: Port = setting(8444, "Its port (0: the kernel picks one)")


class OpsListener(Table):
    host: NonEmpty = setting("127.0.0.1", "Address of the ops plane (plain HTTP: metrics, "
                         "health, CRL); a loopback address unless allow_non_loopback")
    port: Port = setting(9102, "Its port (0: the kernel picks one; serve --workers N: "
                     "worker i listens on port + i)")
    allow_non_loopback: bool = setting(False, "Say true to put the plain-HTTP ops plane on "
                                   "a non-loopback address")


class ListenersTable(Table):
    data: DataListener = setting(DataListener(), "The data plane")
    ops: OpsListener = setting(OpsListener(), "The ops plane")
    admin: AdminListener = setting(AdminListener(), "The admin plane")


class CaTable(Table):
    cert: FilePath = setting(doc="The gateway CA's certificate: it issues tenant certificates "
                         "from CSRs")
    key: FilePath = setting(doc="The CA's private key")
    client_lifetime_days: PositiveNumber = setting(30.0, "Default lifetime of an issued "
                                               "client certificate")
    max_lifetime_days: PositiveNumber = setting(90.0, "Longest lifetime a request may ask for")
    crl_next_update_s: PositiveNumber = setting(24 * 3600.0, "The CRL's nextUpdate, from "
                                            "its signing")


class VaultTable(Table):
    key_file: FilePath | None = setting(None, "File holding the vault's master key",
                                    shown="none: the variable key_env")
    key_env: NonEmpty = setting("GATEWAY_VAULT_KEY", "Environment variable holding the "
                            "master key when key_file is not set")
    upstream_max_age_days: PositiveNumber = setting(90.0, "An upstream credential older "
                                                "than this is due for rotation")
    rotation_grace_s: PositiveNumber = setting(10.0, "The old upstream credential stays "
                                           "usable this long after a rotation")
    breakglass_max_duration_s: PositiveNumber = setting(4 * 3600.0, "Longest break-glass "
                                                    "checkout")
    breakglass_emergency_duration_s: PositiveNumber = setting(30 * 60.0, "Longest emergency "
                                                          "(single-approval) checkout")
    approver_other_team: bool = setting(True, "A break-glass approver must be of another "
                                    "team than the requester")


class LockboxTable(Table):
    ttl_s: PositiveNumber = setting(4 * 3600.0, "A reached tenant with lockbox = \"approve\" "
                                    "has this long to consent to a break-glass case; after "
                                    "it, the case's checkout is refused (lockbox-expired)")
    reach: dict[str, list[NonEmpty]] = setting(
        {}, "Privileged account (of [accounts]) -> the tenants whose data it can touch: "
        "tenant ids and groups from the tenant files (@hes-consortium, @market, "
        "@it-clients, @cmh-coordinators, @all-operators); an account not named reaches "
        "nobody (no lockbox)")


class AuditTable(Table):
    checkpoint_every: PositiveInt = setting(1000, "Events between signed checkpoints")
    checkpoint_interval_s: PositiveNumber = setting(60.0, "... or this long, whichever "
                                                "comes first")
    segment_max_mb: PositiveNumber = setting(64.0, "Seal the audit file at the first "
                                         "checkpoint past this size")
    segment_max_age_h: PositiveNumber = setting(24.0, "... or past this age")
    raw_retention_days: Annotated[float, Field(ge=0)] = setting(
        90.0, "Sealed, rolled-up raw events older than this are deleted; 0 keeps everything")
    fleet_checkpoint_interval_s: PositiveNumber = setting(60.0, "A fleet: the control plane "
                                                      "signs every replica's shipped head "
                                                      "this often")


class SocTable(Table):
    file: FilePath | None = setting(None, "Security events as JSON lines to this file",
                                shown="none")
    webhook: NonEmpty | None = setting(None, "Security events POSTed to this URL",
                                   shown="none")
    syslog: NonEmpty | None = setting(None, "Security events to syslog: udp://HOST:PORT or "
                                  "tcp://HOST:PORT", shown="none")


class PushTable(Table):
    cert: FilePath | None = setting(None, "The gateway's client certificate for deliveries "
                                "of pushed data", shown="none")
    key: FilePath | None = setting(None, "Its private key", shown="none")
    endpoints: dict[str, NonEmpty] = setting({}, "Tenant id -> https:// URL, overriding the "
                                         "tenant file's push_endpoint")
    max_pending_records: PositiveInt = setting(5_000_000, "Records queued for delivery per "
                                           "tenant; beyond: 429")
    max_body_bytes: PositiveInt = setting(256 * MiB, "Largest delivery body")
    lease_s: PositiveNumber = setting(60.0, "A fleet's replicas claim outbox parts under a "
                                  "lease this long")


class RetentionTable(Table):
    dead_letter_payload_days: PositiveNumber = setting(
        DEFAULT_DEAD_LETTER_PAYLOAD_DAYS, "A dead letter's payload is erased this long after "
        "it died; its row stays as a tombstone (tenant, batch, records, error, when)")
    disabled_principal_days: Annotated[float, Field(ge=MIN_REVIEWED_DAYS)] = setting(
        DEFAULT_DISABLED_PRINCIPAL_DAYS, "A disabled principal no longer declared in "
        "tenants/ is deleted from the state this long after it was disabled, leaving an "
        "audit tombstone; at least 183, so a six-monthly access review sees it (D8)")
    consultation_register_days: Annotated[float, Field(ge=MIN_REVIEWED_DAYS)] = setting(
        DEFAULT_CONSULTATION_REGISTER_DAYS, "Consultation-register entries (D8) are deleted "
        "this long after the consultation: 20 months, the longest the report keeps a trace "
        "of use (it names no legal period for the register); at least 183")
    notification_days: Annotated[float, Field(ge=MIN_REVIEWED_DAYS)] = setting(
        DEFAULT_NOTIFICATION_DAYS, "A tenant's notifications (GET /notifications: breaches "
        "of its data, D1, D12; lockbox notices, D7) are deleted this long after they were "
        "made; the audit log keeps each one's event; at least 183, so a six-monthly review "
        "sees them")
    interval_s: PositiveNumber = setting(3600.0, "How often the control duties apply the "
                                         "policy (at start, then this often)")


class StateTable(Table):
    url: NonEmpty | None = setting(None, "sqlite:///PATH or postgresql://... (shared by a "
                               "fleet's replicas)", shown="none: data_dir/state.db")
    max_staleness_s: PositiveNumber = setting(5.0, "Shared state unread for longer: "
                                          "requests are refused (503)")


class FleetTable(Table):
    role: Literal["all", "control", "data"] = setting(
        "all", "What this process runs; control and data need PostgreSQL state")
    replica_id: NonEmpty | None = setting(None, "The replica's name in heartbeats, metrics "
                                      "and its audit chain", shown="<host>-<role>")
    heartbeat_interval_s: Annotated[float, Field(ge=0.05, le=60)] = setting(
        1.0, "How often this replica says it is alive")


class LogTable(Table):
    format: LogFormat = setting("text", "The process log: text on stderr, or json on "
                                "stdout (one object per line, with the incident id)")
    access: bool = setting(False, "One access-log line per data-plane request (logger "
                           "gateway.access; not the audit log)")


class CanaryTable(Table):
    enabled: bool = setting(False, "Run the isolation canary prober: every interval, each "
                            "tenant's canary principal asks for every canary the relation "
                            "feed marks, through the data plane (D1); needs [ca] and role "
                            "\"all\"")
    interval_s: PositiveNumber = setting(60.0, "Time between two rounds of probes")
    timeout_s: PositiveNumber = setting(10.0, "One probe's whole request")


class UpstreamTable(Table):
    url: NonEmpty = setting(doc="http:// or https:// base URL of the shared system")
    ca: FilePath | None = setting(None, "CA bundle verifying an https upstream",
                              shown="the system's CAs")
    timeout_s: PositiveNumber = setting(10.0, "Whole call")
    connect_timeout_s: PositiveNumber = setting(2.0, "Connecting")
    max_response_bytes: PositiveInt = setting(8 * MiB, "Largest answer read")
    pool_size: PositiveInt = setting(128, "Keep-alive connections; a tenant gets at most "
                                 "its quota's share")
    breaker_failures: PositiveInt = setting(5, "Consecutive failures that open the circuit")
    breaker_open_s: PositiveNumber = setting(5.0, "Then one probe after this long")
    credential: Literal["bearer", "api-key", "basic", "mtls"] = setting(
        "bearer", "How the shared system takes the gateway's credential")
    queue_timeout_s: PositiveNumber = setting(2.0, "Pool busy: wait (fairly among tenants) "
                                          "this long, then 503")


def _table(name: str, doc: str, fields: dict[str, Any]) -> type[Table]:
    """A table whose keys come from elsewhere (the catalogue, EdgeLimits)."""
    return cast(type[Table], create_model(name, __base__=Table, __doc__=doc, **fields))


_UPSTREAMS = _table("UpstreamsTable", "One table per shared system, each required.", {
    name: (UpstreamTable, setting(doc=f"The shared system {name!r}")) for name in UPSTREAMS})

LIMIT_DOCS = {
    "max_request_line_bytes": "Request line; beyond: 414",
    "max_header_bytes": "One header; beyond: 431",
    "max_header_block_bytes": "The header block; beyond: 431",
    "max_headers": "Header count; beyond: 431",
    "header_timeout_s": "Reading the headers (slowloris); then the connection is closed",
    "body_timeout_s": "Between body chunks; then 408",
    "handshake_timeout_s": "The TLS handshake; then the connection is closed",
    "keepalive_timeout_s": "An idle keep-alive connection is closed after this long",
    "max_connections": "Connections per listener; more are closed at once",
    "max_connections_per_tenant": "Connections per tenant; more are closed at once",
    "max_in_flight": "Requests handled at once; beyond: 503 (load shedding)",
    "memory_budget_mb": "RSS above it: 503 + Retry-After, new connections closed, "
                        "/readyz 503",
    "max_push_records_mb": "Per-record push batch or booking body; beyond: 413",
    "max_push_meter_days_mb": "meter-days/v1 push batch body; beyond: 413",
    "max_push_in_progress": "Large pushes read or routed at once; one more: 503",
}


def _limit(field: dataclasses.Field[Any]) -> tuple[Any, Any]:
    default = field.default
    kind = PositiveInt if isinstance(default, int) else PositiveNumber
    return kind, setting(default, LIMIT_DOCS[field.name])


_LIMITS = _table("LimitsTable", "Edge limits of the mTLS listeners.",
                 {f.name: _limit(f) for f in dataclasses.fields(EdgeLimits)})
if TYPE_CHECKING:  # made above from the catalogue and EdgeLimits
    UpstreamsTable = Table
    LimitsTable = Table
else:
    UpstreamsTable, LimitsTable = _UPSTREAMS, _LIMITS


class GatewayFile(Table):
    """``gateway.toml``."""

    gateway: GatewayTable = setting(doc="The gateway itself")
    tls: TlsTable = setting(doc="The server TLS material of the mTLS listeners")
    listeners: ListenersTable = setting(ListenersTable(), "Where each plane listens")
    upstreams: UpstreamsTable = setting(doc="The shared systems behind the gateway")
    ca: CaTable | None = setting(None, "The gateway's own CA (the control plane's)",
                             shown="none: no issuance")
    vault: VaultTable = setting(VaultTable(), "Where the vault's master key comes from")
    audit: AuditTable = setting(AuditTable(), "The audit log's checkpoints, segments and "
                            "retention")
    soc: SocTable = setting(SocTable(), "Security events for the SOC")
    accounts: dict[str, UpstreamName] = setting(
        {}, "Privileged account -> the upstream it belongs to (break-glass)")
    lockbox: LockboxTable = setting(LockboxTable(), "Tenant lockbox: each privileged "
                                    "account's reach and the time limit of a tenant's "
                                    "consent (D7)")
    push: PushTable = setting(PushTable(), "Delivery of pushed data")
    limits: LimitsTable = setting(LimitsTable(), "Edge limits of the mTLS listeners")
    state: StateTable = setting(StateTable(), "Where the state lives")
    retention: RetentionTable = setting(RetentionTable(), "How long dead letters, disabled "
                                        "principals and the consultation register are kept "
                                        "(D8, D10)")
    fleet: FleetTable = setting(FleetTable(), "This process's part in a fleet")
    log: LogTable = setting(LogTable(), "The process log and the access log")
    canary: CanaryTable = setting(CanaryTable(), "The isolation canary prober (D1, D12)")
