"""Every relation test runs twice: on the lookup in C (gateway/core/_native.c)
where it was built, and on the Python reference (_holds_function in
gateway/core/relations/index.py), so both answer every question the tests ask."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.core.relations import index as index_module


@pytest.fixture(scope="module", autouse=True, params=["native", "reference"])
def holds_implementation(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "native" and not index_module.native_available():
        # tests/core/test_native.py fails where a compiler was there and the
        # module was not built; here the reference alone runs.
        pytest.skip("gateway.core._native was not built on this machine")
    with pytest.MonkeyPatch.context() as mp:
        if request.param == "reference":
            mp.setattr(index_module, "_native", None)
        yield request.param
