"""What the gateway is assembled from that is not a collaborator of its
own: the SOC's syslog sink, the replica's name in PostgreSQL, the vault's
master key."""

from __future__ import annotations

from gateway.audit import SyslogSink
from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from gateway.vault import MasterKeys, VaultLocked


def syslog_sink(url: str | None) -> SyslogSink | None:
    """The SOC's syslog sink from ``[soc] syslog`` (``udp://host:port``,
    ``tcp://[::1]:port``), or None."""
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
