"""Typed, frozen configuration: the gateway's config file (``gateway serve
--config FILE``, :class:`GatewayConfig`) and the edge limits of its
``[limits]`` table (:class:`EdgeLimits`). Loading validates everything and
names the file and key of what is wrong, at start-up.

The schemas of ``gateway.toml`` (:class:`GatewayFile`) and of a tenant file
(:class:`TenantFile`, read by :mod:`gateway.tenants`) are written once, in
pydantic: strict types, unknown keys refused. docs/configuration.md and the
JSON Schemas in docs/schema/ are generated from them
(``python -m gateway.config``).

May import: :mod:`gateway.core` (the catalogue of shared systems, tenant
kinds, quotas), :mod:`gateway.errors` and :mod:`gateway.logs` (the log
formats).
"""

from __future__ import annotations

from gateway.config._gateway import (
    DEFAULT_HTTP_SERVER,
    DEFAULT_LIMITS,
    HTTP_SERVERS,
    AuditConfig,
    CaConfig,
    CanaryConfig,
    FleetConfig,
    GatewayConfig,
    Listener,
    LockboxConfig,
    LogConfig,
    RetentionConfig,
    Upstream,
    VaultConfig,
)
from gateway.config._limits import EdgeLimits
from gateway.config._schema import GatewayFile
from gateway.config._tenant_file import PrincipalEntry, TenantFile
from gateway.config._validate import validate

__all__ = [
    "DEFAULT_HTTP_SERVER",
    "DEFAULT_LIMITS",
    "HTTP_SERVERS",
    "AuditConfig",
    "CaConfig",
    "CanaryConfig",
    "EdgeLimits",
    "FleetConfig",
    "GatewayConfig",
    "GatewayFile",
    "Listener",
    "LockboxConfig",
    "LogConfig",
    "PrincipalEntry",
    "RetentionConfig",
    "TenantFile",
    "Upstream",
    "VaultConfig",
    "validate",
]
