"""Assembles a gateway from its configuration and runs it.

- ``_gateway``: :class:`Gateway`, one process's collaborators built from its
  configuration (vault first, then state, PKI, audit, upstreams, data plane),
  reload of tenants and relations, drain and stop;
- ``_planes``: the listeners of its role (data, admin, ops);
- ``_duties``: the background rounds (maintenance, upstream rotation);
- ``_keys``: the master key's online rotation, the data keys in the vault;
- ``_assembly``: the vault's master key read, the SOC's syslog sink, the
  replica's name in PostgreSQL.

May import every package below it (``ops``, ``fleet``, ``retention``,
``canary``, ``admin``, ``dataplane`` and down); only :mod:`gateway.cli`
(``serve``) and :mod:`gateway.demo` import it.
"""

from gateway.server._gateway import Gateway
from gateway.server._keys import OUTBOX_KEY_ID

__all__ = ["OUTBOX_KEY_ID", "Gateway"]
