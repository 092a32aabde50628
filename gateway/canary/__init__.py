"""The isolation canary prober (D1, D12): the gateway asks, as every
tenant's canary principal, for every canary the relation feed marks, through
its own data plane, and raises a breach when a foreign canary is served.
The decisions are pure, in :mod:`gateway.core.canary`.

May import: the layers below the server (push, pki, audit, tls, metrics,
core); the server starts it.
"""

from __future__ import annotations

from gateway.canary._prober import CERT_LIFETIME, CanaryProber, Probe

__all__ = ["CERT_LIFETIME", "CanaryProber", "Probe"]
