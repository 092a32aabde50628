"""Security events for the SOC (D12): isolation violations, revoked or
unknown certificates, break-glass use, admin changes, repeated denials from
one principal. Sinks: a JSON-lines file, an HTTP webhook, RFC 5424 syslog
over UDP or TCP (:mod:`gateway.audit._syslog`); every event carries its incident id.

An event never carries a secret or a payload: kind, severity, incident id,
who, what.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

from gateway.audit._syslog import SyslogSink

log = logging.getLogger("gateway.audit")
SEVERITIES = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


class SecurityEvents:
    def __init__(self, *, file: Path | None = None, webhook: str | None = None,
                 syslog: SyslogSink | None = None) -> None:
        self.file = file
        self.webhook = webhook
        self.syslog = syslog
        # Syslog sends may block up to their timeout: a thread of their own.
        self._syslog_queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=10_000)
        self._syslog_thread: threading.Thread | None = None
        if syslog is not None:
            self._syslog_thread = threading.Thread(target=self._syslog_loop, daemon=True,
                                                   name="soc-syslog")
            self._syslog_thread.start()
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

    def _syslog_loop(self) -> None:
        assert self.syslog is not None
        while (event := self._syslog_queue.get()) is not None:
            self.syslog.send(event)

    async def close(self) -> None:
        if self._syslog_thread is not None and self.syslog is not None:
            self._syslog_queue.put(None)
            await asyncio.to_thread(self._syslog_thread.join, 5)
            self.syslog.close()
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
        if self._syslog_thread is not None:
            try:
                self._syslog_queue.put_nowait(event)
            except queue.Full:
                log.error("syslog queue full; the event is kept in the file sink only",
                          extra={"incident": incident})
        if self._queue is not None:
            try:
                self._queue.put_nowait(event)
            except asyncio.QueueFull:
                log.error("SOC webhook queue full; the event is kept in the file sink only",
                          extra={"incident": incident})
        return event

    async def _deliver(self) -> None:
        assert self._queue is not None and self.webhook is not None
        # Imported here: the audit package (and its verifier, which ships to
        # third parties) needs no HTTP client unless a webhook is configured.
        import aiohttp

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
                    log.error("SOC webhook did not take the event",
                              extra={"incident": event["incident"]})
