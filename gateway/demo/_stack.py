"""The whole demo on loopback: dev PKI, dataset, the four simulated shared
systems and the gateway. Used by ``gateway demo`` (fixed ports) and by the
tests (port 0 everywhere, so a running demo and the suite never collide)."""

from __future__ import annotations

import json
import secrets
import socket
import ssl
import textwrap
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import web

from gateway.config import GatewayConfig
from gateway.demo._dataset import Dataset, generate
from gateway.demo._devpki import DevPki, ensure_dev_pki, reissue
from gateway.demo._partner_tls import client_tls, server_tls
from gateway.demo._ports import spare_port
from gateway.demo.simulators import ACCOUNTS, SIMULATOR_NAMES, SimSecrets, build_simulator
from gateway.demo.simulators.hes import configure_push
from gateway.demo.simulators.receivers import build_receivers
from gateway.edge import bind
from gateway.errors import ListenerUnavailable
from gateway.files import write_private
from gateway.pki import JwksKeySource
from gateway.server import Gateway
from gateway.state import Consultation, PrincipalState
from gateway.tenants import TenantRegistry, load_tenants
from gateway.vault import (
    MasterKeys,
    SecretNotFound,
    account_secret_id,
    identity_id,
    identity_uri,
    new_token,
    open_vault,
    token_id,
)

TRUST_DOMAIN = "shared-grid.test"
# Each demo system takes the gateway's credential in another form.
DEMO_CREDENTIALS = {"hes": "bearer", "clearing": "api-key", "cmh": "basic", "itsm": "mtls"}
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class StackPorts:
    data: int = 0
    ops: int = 0
    admin: int = 0
    receivers: int = 0
    simulators: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIMULATOR_NAMES, 0))

    @classmethod
    def demo(cls) -> StackPorts:
        return cls(8443, 9102, 8444, 9205,
                   {"hes": 9201, "clearing": 9202, "cmh": 9203, "itsm": 9204})


def _simulator_tls(pki: DevPki, *, client_certs: bool = False) -> ssl.SSLContext:
    """A shared system's listener; with ``client_certs`` it asks for one (the
    gateway's certificate is checked per request) and trusts the bundle as
    it is at each handshake, so a new CA's certificates are accepted."""
    if not client_certs:
        return server_tls(pki.server_cert, pki.server_key).context
    return server_tls(pki.server_cert, pki.server_key, clients_ca=pki.ca_cert,
                      require_client_cert=False).server_context()


def _receiver_tls(pki: DevPki) -> ssl.SSLContext:
    """The operators' receivers: they demand a client certificate (the gateway's),
    verified against the trust bundle as it is at each handshake."""
    return server_tls(pki.server_cert, pki.server_key, clients_ca=pki.ca_cert).server_context()


# D7: whose data each privileged account of the demo can touch ([lockbox.reach]),
# by the shared system it belongs to: the HES's consortium, the clearing
# system's market parties, the Connect My Home coordinators and partners, the
# IT platform's client companies (groups read from the tenant files).
DEMO_REACH = {
    "hes": ["@hes-consortium"],
    "clearing": ["@market"],
    "cmh": ["@cmh-coordinators", "swde", "proximus", "orange", "telenet"],
    "itsm": ["@it-clients"],
}


def lockbox_config(ttl_s: float | None = None) -> list[str]:
    """The demo's ``[lockbox]`` table."""
    return ["[lockbox]", *([f"ttl_s = {ttl_s}"] if ttl_s is not None else []), "",
            "[lockbox.reach]",
            *(f"{ACCOUNTS[upstream]} = [{', '.join(chr(34) + e + chr(34) for e in entries)}]"
              for upstream, entries in DEMO_REACH.items())]


def write_config(path: Path, *, pki: DevPki, tenants_dir: Path, relations: Path,
                 data_dir: Path, data_port: int, ops_port: int, admin_port: int,
                 sim_ports: dict[str, int], upstream_timeout_s: float = 5.0,
                 health_interval_s: float = 5.0, receivers_port: int = 0,
                 push_tenants: tuple[str, ...] = (), soc_syslog: str | None = None,
                 upstream_settings: str = "", lockbox: bool = False,
                 lockbox_ttl_s: float | None = None) -> None:
    """A config file equivalent to the demo, for ``gateway serve --config``.
    ``upstream_settings``: extra ``key = value`` lines for every upstream (tests)."""
    lines = [
        "# Written by `gateway demo`; paths are absolute.",
        "[gateway]",
        f'trust_domain = "{pki.trust_domain}"',
        f'tenants_dir = "{tenants_dir.resolve()}"',
        f'relations = "{relations.resolve()}"',
        f'data_dir = "{data_dir.resolve()}"',
        f"health_interval_s = {health_interval_s}",
        "",
        "[tls]",
        f'cert = "{pki.server_cert.resolve()}"',
        f'key = "{pki.server_key.resolve()}"',
        f'trust_bundle = "{pki.ca_cert.resolve()}"',
        "",
        "[listeners.data]",
        f'host = "{LOOPBACK}"',
        f"port = {data_port}",
        "",
        "[listeners.ops]",
        f'host = "{LOOPBACK}"',
        f"port = {ops_port}",
        "",
        "[listeners.admin]",
        f'host = "{LOOPBACK}"',
        f"port = {admin_port}",
        "",
        "[ca]",
        f'cert = "{pki.ca_cert.resolve()}"',
        f'key = "{pki.ca_key.resolve()}"',
        "",
        "[vault]",
        f'key_file = "{(data_dir / "vault.key").resolve()}"',
        "",
        "[soc]",
        f'file = "{(data_dir / "soc.jsonl").resolve()}"',
        *([f'syslog = "{soc_syslog}"'] if soc_syslog else []),
        "",
        "[accounts]",
        *(f'{account} = "{upstream}"' for upstream, account in ACCOUNTS.items()),
        "",
        *([*lockbox_config(lockbox_ttl_s), ""] if lockbox else []),
        "[push]",
        f'cert = "{pki.push_cert.resolve()}"',
        f'key = "{pki.push_key.resolve()}"',
        "",
        "[push.endpoints]",
        *(f'{tenant} = "https://{LOOPBACK}:{receivers_port}/receivers/{tenant}/readings"'
          for tenant in sorted(push_tenants)),
    ]
    for name, port in sim_ports.items():
        lines += ["", f"[upstreams.{name}]", f'url = "https://{LOOPBACK}:{port}"',
                  f'credential = "{DEMO_CREDENTIALS[name]}"',
                  f'ca = "{pki.ca_cert.resolve()}"', f"timeout_s = {upstream_timeout_s}",
                  *upstream_settings.strip().splitlines()]
    path.write_text("\n".join(lines) + "\n")


# The demo's history (Stack(history=True)): what retention deletes at start.
HISTORIC_CONSULTATION = "demo-consultation-2024"
HISTORIC_LEAVER = ("ores", "person", "leaver-2025")


class Stack:
    def __init__(self, *, tenants_dir: Path, certs_dir: Path, work_dir: Path,
                 ports: StackPorts | None = None, now: datetime | None = None,
                 trust_domain: str = TRUST_DOMAIN, upstream_timeout_s: float = 5.0,
                 health_interval_s: float = 5.0, gateway_settings: str = "",
                 run_gateway: bool = True, soc_syslog: str | None = None,
                 limits: str = "", upstream_ports: dict[str, int] | None = None,
                 extra_config: str = "", upstream_settings: str = "",
                 state_url: str | None = None, history: bool = False,
                 canary_interval_s: float | None = None,
                 lockbox: bool = False, lockbox_ttl_s: float | None = None) -> None:
        self.tenants_dir = tenants_dir
        # D7: the demo's [lockbox] reach (`gateway demo`; tests that ask for it).
        self.lockbox = lockbox
        self.lockbox_ttl_s = lockbox_ttl_s
        # D8, D10: state older than its retention period (`gateway demo` only),
        # so the retention duty has something to delete at start.
        self.history = history
        # D1: the isolation canary prober every this many seconds (None: off).
        self.canary_interval_s = canary_interval_s
        self.certs_dir = certs_dir
        self.work_dir = work_dir
        self.ports = ports or StackPorts()
        self.now = now
        self.trust_domain = trust_domain
        self.upstream_timeout_s = upstream_timeout_s
        self.health_interval_s = health_interval_s
        # Extra `key = value` lines for the [gateway] table (tests: short overlaps).
        self.gateway_settings = gateway_settings
        self.run_gateway = run_gateway
        self.soc_syslog = soc_syslog
        self.limits = limits  # `key = value` lines for a [limits] table (tests)
        self.extra_config = extra_config  # whole TOML tables appended (e.g. [audit])
        self.upstream_settings = upstream_settings  # lines for every [upstreams.*] (tests)
        # Where the gateway processes will keep state (and so the vault) when
        # another process runs them from this config (demo.Fleet).
        self.state_url = state_url
        # Where the gateway reaches an upstream, if not the simulator itself
        # (tests put a fault proxy in between).
        self.upstream_ports = upstream_ports or {}
        self.config_path = work_dir / "gateway.toml"
        self.gateway_ports = (0, 0, 0)  # (data, ops, admin) when another process runs it
        self.control_token = secrets.token_hex(16)
        self.registry: TenantRegistry
        self.pki: DevPki
        self.dataset: Dataset
        self.gateway: Gateway
        self.sim_ports: dict[str, int] = {}
        self.receivers_port = 0
        self.apps: dict[str, web.Application] = {}
        self._runners: list[web.BaseRunner] = []

    async def start(self) -> None:
        self.registry = load_tenants(self.tenants_dir)
        self.pki = ensure_dev_pki(self.certs_dir, self.registry, self.trust_domain)
        self.dataset = generate(self.registry, self.now)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        _, relations = self.dataset.write(self.work_dir)
        # Every port first, so a busy one stops the demo before anything runs.
        socks = self._bind_all()
        data_sock, ops_sock, admin_sock, receivers_sock = (
            socks.pop(name) for name in ("data plane", "ops plane", "admin plane",
                                         "push receivers"))
        ops_port = ops_sock.getsockname()[1]
        keys = JwksKeySource(f"http://{LOOPBACK}:{ops_port}/.well-known/jwks.json")
        sim_tls = _simulator_tls(self.pki)
        sim_socks = {name: socks[f"{name} simulator"] for name in SIMULATOR_NAMES}
        self.sim_ports = {name: sock.getsockname()[1] for name, sock in sim_socks.items()}
        sim_secrets = self._provision_secrets()
        mtls_tls = _simulator_tls(self.pki, client_certs=True)
        for name, sock in sim_socks.items():
            app = build_simulator(name, self.dataset, keys, self.control_token,
                                  sim_secrets[name])
            self.apps[name] = app
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            tls = mtls_tls if DEMO_CREDENTIALS[name] == "mtls" else sim_tls
            await web.SockSite(runner, sock, ssl_context=tls).start()
            self._runners.append(runner)
        self.receivers_port = receivers_sock.getsockname()[1]
        runner = web.AppRunner(build_receivers(self.pki.push_uri, self.control_token),
                               access_log=None, handle_signals=False)
        await runner.setup()
        await web.SockSite(runner, receivers_sock, ssl_context=_receiver_tls(self.pki)).start()
        self._runners.append(runner)
        config_path = self.work_dir / "gateway.toml"
        write_config(config_path, pki=self.pki, tenants_dir=self.tenants_dir,
                     relations=relations, data_dir=self.work_dir,
                     data_port=data_sock.getsockname()[1], ops_port=ops_port,
                     admin_port=admin_sock.getsockname()[1],
                     sim_ports={**self.sim_ports, **self.upstream_ports},
                     upstream_timeout_s=self.upstream_timeout_s,
                     health_interval_s=self.health_interval_s,
                     receivers_port=self.receivers_port,
                     push_tenants=tuple(t.id for t in self.registry
                                        if t.push_endpoint is not None),
                     soc_syslog=self.soc_syslog, upstream_settings=self.upstream_settings,
                     lockbox=self.lockbox, lockbox_ttl_s=self.lockbox_ttl_s)
        if self.limits:
            with config_path.open("a") as fh:
                fh.write("\n[limits]\n" + self.limits.strip() + "\n")
        if self.extra_config:
            with config_path.open("a") as fh:
                fh.write("\n" + self.extra_config.strip() + "\n")
        if self.canary_interval_s is not None:
            with config_path.open("a") as fh:
                fh.write(f"\n[canary]\nenabled = true\ninterval_s = {self.canary_interval_s}\n")
        if self.gateway_settings:
            text = config_path.read_text().replace(
                "[gateway]\n", "[gateway]\n" + self.gateway_settings.strip() + "\n", 1)
            config_path.write_text(text)
        self.config_path = config_path
        if not self.run_gateway:
            # Another process runs the gateway from this config (crash tests).
            self.gateway_ports = (data_sock.getsockname()[1], ops_port,
                                  admin_sock.getsockname()[1])
            for sock in (data_sock, ops_sock, admin_sock):
                sock.close()
            return
        self.gateway = Gateway(GatewayConfig.from_toml(config_path))
        # The dev certificates were issued outside the admin API: record them so
        # revocation by principal and the access review know them.
        creds = self.gateway.credentials
        for tenant in self.registry:
            for p in tenant.principals.values():
                key = (tenant.id, p.kind, p.name)
                path = self.pki.client_cert(tenant.id, p.name)
                if creds.is_revoked(path.read_bytes()) and key not in creds.view.disabled:
                    # Revoked in an earlier demo run: the demo hands out a new one.
                    reissue(self.pki, self.pki.authority(), tenant.id, p.kind, p.name)
                creds.import_certificate(path.read_bytes(), key)
        self.gateway.credentials.refresh()
        if self.history:
            self._seed_history()
        await self.gateway.start(data_sock, ops_sock, admin_sock)
        # The HES pushes its daily batch to the gateway as hes-operator/pusher.
        configure_push(self.apps["hes"], f"https://{LOOPBACK}:{self.gateway.data_port}"
                       "/push/hes/batches", client_tls(
                           self.pki.ca_cert, self.pki.client_cert("hes-operator", "pusher"),
                           self.pki.client_key("hes-operator", "pusher")))

    def _seed_history(self) -> None:
        """What a gateway that has run for years holds, and retention removes
        at start (README: Retention): a national-register consultation of
        700 days ago (past the register's 610) and the state of a leaver
        disabled 450 days ago (past 400) whom no tenant file names any more.
        Each deletion leaves a `retention` audit event."""
        now = self.now or datetime.now(UTC)
        store = self.gateway.store
        nrn = next(p["nrn"] for p in self.dataset.persons if p["employer"] == "ores")
        store.add_consultation(Consultation(
            HISTORIC_CONSULTATION, now - timedelta(days=700), "ores", "person/erik",
            "/itsm/persons/{nrn}", nrn, "hr-administration", "HR-2024-3"))
        store.set_principal_state(PrincipalState(
            HISTORIC_LEAVER, True, now - timedelta(days=450), "left the company (HR)",
            "ores/person/alice"))

    def _bind_all(self) -> dict[str, socket.socket]:
        """The demo's listening sockets by listener name; none stays open if
        one cannot bind (:class:`gateway.errors.ListenerUnavailable`)."""
        wanted = {"data plane": self.ports.data, "ops plane": self.ports.ops,
                  "admin plane": self.ports.admin,
                  **{f"{name} simulator": self.ports.simulators.get(name, 0)
                     for name in SIMULATOR_NAMES},
                  "push receivers": self.ports.receivers}
        if not self.run_gateway:
            # Another process binds the gateway's ports after these close: not
            # ports the kernel could hand a connection meanwhile.
            for listener in ("data plane", "ops plane", "admin plane"):
                wanted[listener] = wanted[listener] or spare_port(LOOPBACK)
        socks: dict[str, socket.socket] = {}
        try:
            for listener, port in wanted.items():
                socks[listener] = bind(LOOPBACK, port, listener=listener)
        except ListenerUnavailable:
            for sock in socks.values():
                sock.close()
            raise
        return socks

    def _provision_secrets(self) -> dict[str, SimSecrets]:
        """The shared systems' credentials: the gateway's service token and the
        privileged accounts' passwords, created in the vault on the first run
        and handed to the simulators as what they accept (the provisioning a
        real system's operator does once)."""
        key_file = self.work_dir / "vault.key"
        if not key_file.exists():
            write_private(key_file, MasterKeys.generate().to_text().encode())
        # Where the gateway will look: PostgreSQL when [state] url says so.
        state = tomllib.loads(textwrap.dedent(self.extra_config)).get("state", {})
        vault = open_vault(self.state_url or state.get("url"), self.work_dir / "vault.db",
                           MasterKeys.from_file(key_file))
        try:
            out = {}
            for name in SIMULATOR_NAMES:
                try:
                    token = vault.get(token_id(name)).decode()
                except SecretNotFound:
                    token = new_token()
                    vault.put(token_id(name), token.encode(), kind="upstream-token",
                              labels={"upstream": name})
                account = ACCOUNTS[name]
                try:
                    password = vault.get(account_secret_id(account)).decode()
                except SecretNotFound:
                    password = secrets.token_urlsafe(24)
                    vault.put(account_secret_id(account), password.encode(), kind="account",
                              labels={"upstream": name})
                client_uri = None
                if DEMO_CREDENTIALS[name] == "mtls":
                    client_uri = identity_uri(self.trust_domain, name)
                    try:
                        vault.get(identity_id(name))
                    except SecretNotFound:
                        issued = self.pki.authority().issue_client(client_uri)
                        vault.put(identity_id(name), json.dumps(
                            {"cert": issued.cert_pem().decode(),
                             "key": issued.key_pem().decode()}).encode(),
                            kind="client-cert", labels={"upstream": name})
                out[name] = SimSecrets.initial(token, {account: password}, client_uri)
            return out
        finally:
            vault.close()

    async def stop(self) -> None:
        if self.run_gateway:
            await self.gateway.stop()
        for runner in self._runners:
            await runner.cleanup()

    def simulator_url(self, name: str) -> str:
        return f"https://{LOOPBACK}:{self.sim_ports[name]}"
