"""The data-plane tests run on both event loops the gateway supports: plain
asyncio and uvloop (whose transports cannot be weakly referenced and whose
TLS is its own). The ``plane`` fixture is tests/dataplane/harness.py's."""

from tests.dataplane.harness import plane
from tests.loops import pytest_asyncio_loop_factories

__all__ = ["plane", "pytest_asyncio_loop_factories"]
