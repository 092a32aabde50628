"""PushService.intake reads a columnar batch in its common spelling from the
posted bytes in one pass (``route_posted_days``) and answers, stores and
fingerprints it as the general path (decode, ``scan_days``,
``route_meter_days``) does (D1, D5): the same parts, byte for byte, the same
quarantine and accounting; a re-post that takes the other path is the same
batch (``already-queued``); a body the general path refuses is still refused
with its problem."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.core.native import native
from gateway.errors import RequestRefused
from gateway.push import PushService, _service
from tests.push.test_readings_intake import FLUVIUS, HES, NOW, ORES, make_service

pytestmark = pytest.mark.skipif(native is None, reason="gateway.core._native is not built")

DAY = (NOW.replace(hour=0) - timedelta(days=1)).isoformat()


def a_day(meter: str, **extra: Any) -> dict[str, Any]:
    return {"meter": meter, "start": DAY, "interval": 900, "obis": "1-0:1.8.1", "unit": "kWh",
            "quality": "01" * 4, "values": [0.5, 1, 2.25, 3], **extra}


BODY = json.dumps({"format": "meter-days/v1", "batch_id": "D1", "meter_days": [
    a_day(ORES), a_day(FLUVIUS, operator="ores"), a_day(FLUVIUS, obis="1-0:1.8.2"),
    a_day("not a serial"), a_day(ORES, obis="1-0:2.8.1", values=[1, 2, 1e999, 4])]},
    allow_nan=True).replace("Infinity", "1e999").encode()


@pytest.fixture()
def service(tmp_path: Path) -> Iterator[PushService]:
    made, outbox = make_service(tmp_path)
    yield made
    outbox.close()


def _never(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the general path")


def _payloads(service: PushService) -> dict[str, bytes]:
    return {p.tenant: service.outbox.payload_bytes(p) for p in service.outbox.parts()}


def _answer(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k != "incident"}


def test_a_posted_batch_is_read_in_one_pass_as_the_general_path_reads_it(
        service: PushService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        m.setattr(_service, "scan_days", _never)
        status, one_pass, _ = service.intake(HES, BODY)
    assert status == 202
    assert one_pass["quarantine"] == [
        {"index": 1, "first": 0, "count": 4, "reason": "owner-mismatch", "meter": FLUVIUS},
        {"index": 3, "first": 0, "count": 4, "reason": "malformed-meter-id", "meter": None},
        {"index": 4, "first": 2, "count": 1, "reason": "invalid-record", "meter": ORES}]
    general_service, outbox = make_service(tmp_path / "general")
    with monkeypatch.context() as m:
        m.setattr(_service, "route_posted_days", lambda *a, **k: None)
        status, general, _ = general_service.intake(HES, BODY)
    assert status == 202 and _answer(one_pass) == _answer(general)
    assert _payloads(service) == _payloads(general_service)
    assert b'"values":[0.5, 1, 2.25, 3]' in _payloads(service)["ores"]  # as posted
    outbox.close()


def test_a_re_post_by_the_other_path_is_the_same_batch(
        service: PushService, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        m.setattr(_service, "route_posted_days", lambda *a, **k: None)
        service.intake(HES, BODY)
    with monkeypatch.context() as m:
        m.setattr(_service, "scan_days", _never)
        status, again, _ = service.intake(HES, BODY)
    assert status == 202
    assert {p["status"] for p in again["parts"]} == {"already-queued"}
    other = BODY.replace(b"2.25", b"2.5")
    with pytest.raises(RequestRefused) as refused:
        service.intake(HES, other)
    assert refused.value.status == 409


@pytest.mark.parametrize("body, reason", [
    (BODY.replace(b'"interval": 900', b'"interval": 900, "interval": 900', 1), "duplicate"),
    (BODY.replace(b'"D1"', b'"D 1"'), "bad-batch-id"),
    (BODY[:-1], "body-malformed-json"),
])
def test_a_body_the_general_path_refuses_is_refused(service: PushService, body: bytes,
                                                    reason: str) -> None:
    with pytest.raises(RequestRefused) as refused:
        service.intake(HES, body)
    assert refused.value.status == 400
    assert reason in str(refused.value.reason) + str(refused.value.detail)
