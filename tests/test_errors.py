"""One error tree (STYLE.md, "Errors"; gateway/errors.py draws it): every
exception the gateway defines derives from GatewayError, or, in the pure
core, from its one refusal base; the boundary translates a core refusal in
one place."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import gateway
from gateway.core.duties import InvalidTransition
from gateway.core.headers import HeaderRejected
from gateway.core.jsonlimits import DuplicateKey, TooDeep, loads_limited
from gateway.core.paths import TargetRejected
from gateway.core.push.fanout import FanoutRejected
from gateway.core.push.records import BatchRejected
from gateway.core.rejected import Rejected
from gateway.errors import GatewayError, RequestRefused


def _defined_exceptions() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.walk_packages(gateway.__path__, "gateway."):
        if info.name.startswith("gateway.demo") or info.name.endswith("__main__"):
            continue  # the simulators stand for the shared systems, not the gateway
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and obj.__module__ == module.__name__ and not name.startswith("_")):
                found.append(obj)
    return found


def test_every_gateway_exception_has_one_root() -> None:
    found = _defined_exceptions()
    assert len(found) >= 25  # the walk saw the package, not an empty list
    strays = [f"{e.__module__}.{e.__qualname__}" for e in found
              if not issubclass(e, (GatewayError, Rejected))]
    assert strays == []


def test_the_core_refuses_only_through_its_base() -> None:
    core = [e for e in _defined_exceptions() if e.__module__.startswith("gateway.core.")]
    assert core and all(issubclass(e, Rejected) and not issubclass(e, GatewayError)
                        for e in core)


@pytest.mark.parametrize(("rejected", "status", "reason"), [
    (TargetRejected(405, "method-not-allowed"), 405, "method-not-allowed"),
    (TargetRejected(400, "path-dot-segment"), 400, "path-dot-segment"),
    (HeaderRejected("conflicting-framing"), 400, "conflicting-framing"),
    (FanoutRejected("ean-for-telecom", "an EAN on the telecom part"), 422, "ean-for-telecom"),
    (FanoutRejected("bad-request-id", "request_id is not an id"), 400, "bad-request-id"),
    (BatchRejected("batch-too-large", "10001 records", status=413), 413, "batch-too-large"),
    (BatchRejected("bad-batch-id", "not an id"), 400, "bad-batch-id"),
    (InvalidTransition("approved", "deny"), 409, "invalid-transition"),
])
def test_a_core_refusal_becomes_the_same_status_and_reason(rejected: Rejected, status: int,
                                                           reason: str) -> None:
    refused = RequestRefused.from_core(rejected, headers={"Allow": "GET"})
    assert (refused.status, refused.reason, refused.headers) == (status, reason, {"Allow": "GET"})
    # The caller gets the reason only; what exactly was wrong stays in the log.
    assert refused.detail is None


def test_json_refusals_are_still_value_errors_with_a_stable_reason() -> None:
    with pytest.raises(TooDeep) as deep:
        loads_limited("[" * 10 + "]" * 10, max_depth=5)
    with pytest.raises(DuplicateKey) as dup:
        loads_limited('{"a": 1, "a": 2}')
    assert isinstance(deep.value, ValueError) and deep.value.reason == "too-deep"
    assert isinstance(dup.value, ValueError) and dup.value.reason == "duplicate-key"
    assert "'a'" in str(dup.value)


@pytest.mark.parametrize(("raw", "reason"), [
    (b"[" * 100 + b"]" * 100, "body-too-deep"),
    (b'{"serial": "1", "serial": "2"}', "body-duplicate-key"),
    (b'{"serial": ', "body-malformed-json"),
    (b"\xff\xfe\xfa", "body-malformed-json"),
])
def test_a_body_the_gateway_cannot_read_is_one_400_saying_why(raw: bytes, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        loads_limited(raw, max_depth=64)
    refused = RequestRefused.for_body(info.value)
    assert (refused.status, refused.reason) == (400, reason)
