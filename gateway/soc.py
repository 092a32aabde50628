"""Security events for the SOC (D12): break-glass use, admin changes,
isolation violations. Sinks: a JSON-lines file and/or an HTTP webhook.

An event never carries a secret or a payload: kind, severity, incident id,
who, what.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

log = logging.getLogger("gateway.soc")
SEVERITIES = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


class SecurityEvents:
    def __init__(self, *, file: Path | None = None, webhook: str | None = None) -> None:
        self.file = file
        self.webhook = webhook
        self._lock = threading.Lock()
        self._queue: asyncio.Queue[dict[str, Any]] | None = None
        self._task: asyncio.Task[None] | None = None
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))

    async def start(self) -> None:
        if self.webhook:
            self._queue = asyncio.Queue(maxsize=10_000)
            self._task = asyncio.create_task(self._deliver())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def emit(self, kind: str, severity: str, incident: str, **fields: Any) -> dict[str, Any]:
        if severity not in SEVERITIES:
            raise ValueError(f"unknown severity {severity!r}")
        event = {"ts": time.time(), "kind": kind, "severity": severity, "incident": incident,
                 **fields}
        line = json.dumps(event, sort_keys=True, separators=(",", ":"))
        if self.file is not None:
            with self._lock, self.file.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")
        if self._queue is not None:
            try:
                self._queue.put_nowait(event)
            except asyncio.QueueFull:
                log.error("SOC webhook queue full; event %s kept in the file sink only", incident)
        return event

    async def _deliver(self) -> None:
        assert self._queue is not None and self.webhook is not None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while True:
                event = await self._queue.get()
                for attempt in range(5):
                    try:
                        async with session.post(self.webhook, json=event) as resp:
                            if resp.status < 300:
                                break
                    except (aiohttp.ClientError, TimeoutError):
                        pass
                    await asyncio.sleep(min(2 ** attempt, 10))
                else:
                    log.error("SOC webhook did not take event %s", event["incident"])
