"""The data plane: one pipeline, ordered in one place (identity -> hygiene ->
route -> decide -> quota -> forward -> check -> audit), and the pieces it is
made of: the exchange one request carries, per-upstream fair slots, the
response check, the push intakes and their memory guard, and the trace that
ends every request.

May import every package below it: :mod:`gateway.push`, :mod:`gateway.pki`
(the identity assertion), :mod:`gateway.upstream`, :mod:`gateway.audit`,
:mod:`gateway.edge`, :mod:`gateway.state` and the foundation modules.
"""

from __future__ import annotations

from gateway.dataplane._pipeline import DataPlane

__all__ = [
    "DataPlane",
]
