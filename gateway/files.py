"""Files that hold secrets or tenant data: owner-only from the first byte.

Used by the PKI (private keys), the edge (the server's TLS material), the
vault's key file, the audit keys and the demo's dataset. Nothing here knows
what the bytes mean.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, whole or not at all.

    The bytes go to a sibling temporary file created 0600 and then replace
    ``path`` atomically, so a reader sees the old file or the new one, and a
    file that existed with wider permissions does not lend them to the new one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    # SECURITY: a temporary file left behind by a crash keeps its mode through
    # O_CREAT; make it owner-only before a byte is written.
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
