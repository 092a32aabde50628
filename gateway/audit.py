"""Audit trail of every decision (D10): who, what, decision, ids; never a
payload, never a secret.

This is the append-only JSON-lines sink the data plane writes to. Writing the
event is part of the request: if it fails, the request fails (fail closed).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Protocol


class AuditSink(Protocol):
    def record(self, event: dict[str, Any]) -> None: ...


class AuditWriteFailed(Exception):
    """The audit store could not be written; the request must not proceed."""


class JsonlAuditLog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._fh = os.fdopen(fd, "a", encoding="utf-8")
        self._lock = threading.Lock()
        self.path = path

    def record(self, event: dict[str, Any]) -> None:
        event.setdefault("ts", time.time())
        line = json.dumps(event, separators=(",", ":"), sort_keys=True)
        try:
            with self._lock:
                self._fh.write(line + "\n")
                self._fh.flush()
        except (OSError, ValueError) as exc:
            raise AuditWriteFailed(str(exc)) from exc

    def close(self) -> None:
        self._fh.close()


class MemoryAuditLog:
    """In-memory sink for pure tests of the pipeline."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def record(self, event: dict[str, Any]) -> None:
        self.events.append(event)
