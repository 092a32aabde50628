"""The gateway's background duties: the maintenance round (every half
second) and the scheduled rotation of the upstreams' service credentials."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.server._gateway import Gateway

log = logging.getLogger("gateway.server")
MAINTENANCE_INTERVAL_S = 0.5
UPSTREAM_ROTATION_CHECK_S = 60.0
USAGE_FLUSH_S = 5.0


async def maintain(gw: Gateway) -> None:
    """The control duties' rounds, every MAINTENANCE_INTERVAL_S: the memory
    watch, the shared state followed (D8), last-use records, the credential
    and break-glass duties, retention (D8, D10), usage and the audit's raw
    events (D10). A round that fails is logged; the next one tries again."""
    last_retention, last_usage_flush = float("-inf"), 0.0
    while True:
        await asyncio.sleep(MAINTENANCE_INTERVAL_S)
        try:
            budget = gw.config.limits.memory_budget_mb * 1024 * 1024
            gw.data_plane.over_memory_budget = gw.rss() > budget
            if gw.fleet is None:  # else the member does it, woken by NOTIFY
                await gw.follow_state()
            # The uses noted since the last round: a commit (and SQLite's
            # fdatasync) in a worker thread, not a pause of the loop.
            await asyncio.to_thread(gw.credentials.flush_seen,
                                    gw.credentials.take_seen())
            gw.credentials.maintain()  # the control duties only where they run
            if gw.leading:
                await gw.breakglass.maintain()
            now = time.monotonic()
            if gw.leading and now - last_retention >= gw.config.retention.interval_s:
                last_retention = now
                await asyncio.to_thread(gw.retention.enforce)
            if now - last_usage_flush >= USAGE_FLUSH_S:
                await asyncio.to_thread(gw.usage.flush)
                await asyncio.to_thread(gw.usage.prune)
                last_usage_flush = now
                if gw.audit_pruner is not None:  # D10: raw events once rolled up
                    await asyncio.to_thread(gw.audit_pruner.prune)
        except Exception:  # keep serving; the next round tries again
            log.exception("credential maintenance failed")


async def rotate_upstreams(gw: Gateway) -> None:
    """Scheduled rotation of the service credentials (by age, policy), by
    the process that runs the control duties."""
    while True:
        try:
            if gw.leading:
                await gw.upstream_creds.maintain()
        except Exception:
            log.exception("upstream credential rotation failed")
        await asyncio.sleep(UPSTREAM_ROTATION_CHECK_S)
