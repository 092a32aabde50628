"""The demo stack: the development PKI under ``certs/dev/``, the demo
dataset, the four simulated shared systems (:mod:`gateway.demo.simulators`)
and the whole gateway on loopback, in this process or as a fleet of
processes on a local PostgreSQL (:class:`Fleet`). Only the ``gateway demo`` and ``gateway
certs init-dev`` verbs of :mod:`gateway.cli` (and the tests) import it.

May import everything else.
"""

from __future__ import annotations

from gateway.demo._banner import demo_banner
from gateway.demo._devpki import ensure_dev_pki
from gateway.demo._fleet import Fleet, ReplicaProcess, fleet_banner
from gateway.demo._ports import spare_port
from gateway.demo._stack import TRUST_DOMAIN, Stack, StackPorts

__all__ = [
    "TRUST_DOMAIN",
    "Fleet",
    "ReplicaProcess",
    "Stack",
    "StackPorts",
    "demo_banner",
    "ensure_dev_pki",
    "fleet_banner",
    "spare_port",
]
