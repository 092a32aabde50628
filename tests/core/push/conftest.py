"""Fixtures the push tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.core.relations.index import RelationIndex, native_available


@pytest.fixture(scope="module", params=["native", "reference"])
def owner_reading(request: pytest.FixtureRequest) -> Iterator[str]:
    """A module that uses this runs every test twice: with a meter's owner
    over time read in C (``RelationIndex.native_span``, where
    gateway.core._native was built) and with ``owner_span_reference``, so
    both are held to every rule."""
    with pytest.MonkeyPatch.context() as mp:
        if request.param == "reference":
            mp.setattr(RelationIndex, "native_span", lambda self, *args: None)
        elif not native_available():
            pytest.skip("gateway.core._native is not built")
        yield request.param
