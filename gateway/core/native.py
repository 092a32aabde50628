"""The optional C accelerator, ``gateway.core._native`` (gateway/core/_native.c).

``native`` is the module where the install built it (a C compiler was there),
else None; each user keeps its Python reference for that case.
"""

from __future__ import annotations

from types import ModuleType

native: ModuleType | None
try:
    from gateway.core import _native as native
except ImportError:  # pragma: no cover - not built on this machine
    native = None
