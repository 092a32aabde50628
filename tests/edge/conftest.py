"""The edge's tests run on both event loops the gateway supports."""

from tests.loops import pytest_asyncio_loop_factories

__all__ = ["pytest_asyncio_loop_factories"]
