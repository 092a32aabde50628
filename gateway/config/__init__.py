"""Typed, frozen configuration: the gateway's config file (``gateway serve
--config FILE``, :class:`GatewayConfig`) and the edge limits of its
``[limits]`` table (:class:`EdgeLimits`). Loading validates everything and
names the file and key of what is wrong, at start-up.

May import: :mod:`gateway.core` (the catalogue of shared systems),
:mod:`gateway.errors` and :mod:`gateway.logs` (the log formats).
"""

from __future__ import annotations

from gateway.config._gateway import (
    DEFAULT_HTTP_SERVER,
    DEFAULT_LIMITS,
    HTTP_SERVERS,
    AuditConfig,
    CaConfig,
    FleetConfig,
    GatewayConfig,
    Listener,
    LogConfig,
    Upstream,
    VaultConfig,
)
from gateway.config._limits import EdgeLimits

__all__ = [
    "DEFAULT_HTTP_SERVER",
    "DEFAULT_LIMITS",
    "HTTP_SERVERS",
    "AuditConfig",
    "CaConfig",
    "EdgeLimits",
    "FleetConfig",
    "GatewayConfig",
    "Listener",
    "LogConfig",
    "Upstream",
    "VaultConfig",
]
