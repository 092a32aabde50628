"""The upstream layer's one translation table: every failure of a call maps
to the status and reason the caller sees and the metric label (these appear
in problem documents, audit events and gateway_upstream_errors_total)."""

from __future__ import annotations

import pytest

from gateway.upstream._http import (
    ClientError,
    MalformedResponse,
    NoResponse,
    ResponseBroken,
    ResponseTooLarge,
)
from gateway.upstream._pool import RETRY, translate


@pytest.mark.parametrize(("exc", "expected"), [
    (ResponseTooLarge("over the cap"), (502, "upstream-response-too-large", "too-large")),
    (TimeoutError(), (504, "upstream-timeout", "timeout")),
    (NoResponse("closed before any answer"), (RETRY, "upstream-unreachable", "connection")),
    (ResponseBroken("closed mid-response"), (502, "upstream-reset", "connection")),
    (MalformedResponse("bare LF"), (502, "upstream-malformed-response", "connection")),
    (ClientError("other"), (502, "upstream-unreachable", "connection")),
])
def test_every_failure_has_one_translation(exc: BaseException,
                                           expected: tuple[int, str, str]) -> None:
    assert translate(exc) == expected


def test_the_size_cap_is_not_mistaken_for_a_malformed_answer() -> None:
    # ResponseTooLarge is a MalformedResponse: the more specific row wins.
    assert issubclass(ResponseTooLarge, MalformedResponse)
    assert translate(ResponseTooLarge("x"))[1] == "upstream-response-too-large"


def test_an_unknown_failure_is_not_silently_mapped() -> None:
    with pytest.raises(TypeError):
        translate(ValueError("not the client's"))
