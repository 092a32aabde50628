"""Both event loops the gateway runs on, for pytest-asyncio: a conftest that
imports ``pytest_asyncio_loop_factories`` from here runs each of its async
tests once on plain asyncio and once on uvloop (whose transports, TLS and
connection set-up are its own)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def pytest_asyncio_loop_factories(
        config: pytest.Config, item: pytest.Item,
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
