"""Running the gateway's event loop: uvloop or asyncio, the garbage
collector tuned after start-up, SIGINT/SIGTERM to stop, SIGHUP to reload."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable

from gateway.errors import ConfigError


def tune_gc() -> None:
    """Long-lived state (tenants, the relation index, TLS contexts) is built at
    start-up: move it out of the collector's sight and collect the young
    generation less often. The default thresholds cost ~11 % of CPU and most
    of the p99 tail under load (bench/README.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def loop_factory(choice: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop ``[gateway] event_loop`` asks for: uvloop (a dependency
    of the gateway, and the default when installed: its TLS record layer and
    transports are C, not Python) or asyncio's own."""
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop  # optional: not every platform has a wheel
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("gateway.event_loop = \"uvloop\" but uvloop is not "
                              "installed (pip install uvloop)") from None
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run_until_signal(start: object, stop: object,
                      reload: Callable[[], Awaitable[None]] | None = None,
                      event_loop: str = "auto") -> None:
    async def main() -> None:
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, done.set)
        reloading: set[asyncio.Task[None]] = set()  # a reference until each one is done
        if reload is not None:
            def on_hup() -> None:
                task = loop.create_task(_safe_reload(reload))
                reloading.add(task)
                task.add_done_callback(reloading.discard)

            loop.add_signal_handler(signal.SIGHUP, on_hup)
        await start()  # type: ignore[operator]
        tune_gc()
        try:
            await done.wait()
        finally:
            await stop()  # type: ignore[operator]

    factory = loop_factory(event_loop)
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


async def _safe_reload(reload: Callable[[], Awaitable[None]]) -> None:
    try:
        await reload()
        tune_gc()  # the new snapshot is long-lived too
    except ConfigError as exc:
        logging.getLogger("gateway").error("reload refused, keeping the running config: %s",
                                           exc)
