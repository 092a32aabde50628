"""The wall clock, as the classes that take a ``clock`` read it by default.

``utc_now()`` is ``datetime.now(UTC)``. It is a ``functools.partial``, not a
``lambda``: a C callable, so a call makes no Python frame. The request path
reads it several times a request (the decision's instant, a principal's last
use, the active signing key, the usage day), and a lambda's frame is about a
quarter of what each read costs (bench/README.md, "The answer without
aiohttp's response").
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial

utc_now = partial(datetime.now, UTC)
