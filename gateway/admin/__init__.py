"""The admin plane (D6, D7): a JSON API on its own mTLS listener for the
security team, with dual control for the actions that need a second person,
the vault and break-glass routes, usage and audit routes, and the ``gateway
certs|vault|audit`` command-line verbs that call it.

May import every package below it: :mod:`gateway.vault`, :mod:`gateway.pki`,
:mod:`gateway.audit`, :mod:`gateway.edge`, :mod:`gateway.state` and the
foundation modules. Only :mod:`gateway.server`, :mod:`gateway.ops` and
:mod:`gateway.cli` import it.
"""

from __future__ import annotations

from gateway.admin._app import build_admin_app, hide_banner
from gateway.admin._cli import add_audit_parsers, add_parsers
from gateway.admin._client import AdminCallFailed, demo_work_tree
from gateway.admin._nrn import nrn_routes
from gateway.admin._vault import audit_routes, combine, usage_routes, vault_routes

__all__ = [
    "AdminCallFailed",
    "add_audit_parsers",
    "add_parsers",
    "audit_routes",
    "build_admin_app",
    "combine",
    "demo_work_tree",
    "hide_banner",
    "nrn_routes",
    "usage_routes",
    "vault_routes",
]
