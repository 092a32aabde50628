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


@pytest.fixture(params=["c", "python", "exact"])
def days_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A columnar test that uses this runs three times, on each way the
    router may take a meter-day: "c", parsed by ``scan_days`` as the
    intake does, the common meter-days routed by ``route_days`` in C
    (gateway/core/_native_days.c) and the owners read in C; "python", the
    same parse, everything in Python (``_route_day``, ``owner_span_reference``);
    "exact", parsed by ``scan_batch`` (each ``values`` a list: Python's
    path, whatever is built). ``tests.core.push.test_days.route`` follows it."""
    from tests.core.push import test_days

    if request.param == "python":
        monkeypatch.setattr(RelationIndex, "native_span", lambda self, *args: None)
    elif not native_available():
        pytest.skip("gateway.core._native is not built")
    if request.param == "exact":
        monkeypatch.setattr(test_days, "parse", test_days.scan_batch)
    return str(request.param)
