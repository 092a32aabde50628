"""The data-plane tests run on both event loops the gateway supports: plain
asyncio and uvloop (whose transports cannot be weakly referenced and whose
TLS is its own)."""

from tests.loops import pytest_asyncio_loop_factories

__all__ = ["pytest_asyncio_loop_factories"]
