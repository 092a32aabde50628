"""The canonical bytes' smaller guards, each pinned by a deterministic case
(mutation testing of ``gateway/core/push/canonical.py``, docs/mutation.md):
the fingerprint of a batch larger than one chunk, and orjson taken whenever
its bytes are provably the standard library's (it is the per-batch encoding
of the data plane: the standard library is the fallback, not the rule)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson
import pytest

from gateway.core.push import canonical
from gateway.core.push.canonical import _FP_CHUNK, batch_fingerprint, encode_routed
from tests.core.push._calls import counting
from tests.core.push.test_fingerprint import RECORD


def canonical_fingerprint(batch_id: str, records: list[Any]) -> str:
    """D1: SHA-256 of the whole canonical document, written in one piece."""
    document = json.dumps({"batch_id": batch_id, "records": records}, sort_keys=True,
                          separators=(",", ":"))
    return hashlib.sha256(document.encode()).hexdigest()


@pytest.mark.parametrize("n", [_FP_CHUNK + 1, 2 * _FP_CHUNK + 3])
def test_a_batch_of_several_chunks_has_the_fingerprint_of_the_whole(n: int) -> None:
    """Encoded chunk by chunk, the records are still one comma-separated list:
    a re-post of a large batch matches the fingerprint stored for it (D1)."""
    records = [dict(RECORD, value=k / 4) for k in range(n)]
    posted = json.dumps({"batch_id": "b-1", "records": records}).encode()
    expected = canonical_fingerprint("b-1", records)
    assert batch_fingerprint("b-1", records, posted) == expected
    assert batch_fingerprint("b-1", records) == expected


def _written(monkeypatch: pytest.MonkeyPatch) -> Any:
    """orjson's outputs checked against what the standard library would write."""
    return counting(monkeypatch, canonical, "_same_as_json", key=lambda args: args[0])


RECORDS = [dict(RECORD, value=v) for v in (0, 12.5, -3, 0.0001, 123456.75)]


def test_a_plain_batch_is_fingerprinted_by_orjson_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    posted = json.dumps({"batch_id": "b-1", "records": RECORDS}).encode()
    written = _written(monkeypatch)
    digests = counting(monkeypatch, canonical, "fingerprint_digest")
    assert batch_fingerprint("b-1", RECORDS, posted) == canonical_fingerprint("b-1", RECORDS)
    assert written == {orjson.dumps(RECORDS, option=orjson.OPT_SORT_KEYS): 1}
    assert digests == {"b-1": 1}  # no second digest: the standard library's never started


def test_a_plain_part_is_written_by_orjson(monkeypatch: pytest.MonkeyPatch) -> None:
    written = _written(monkeypatch)
    out = encode_routed(RECORDS)
    assert out == json.dumps(RECORDS, separators=(",", ":")).encode()
    assert written == {out: 1}


def test_a_part_orjson_cannot_write_is_the_standard_librarys(
        monkeypatch: pytest.MonkeyPatch) -> None:
    records = [dict(RECORD, value=2 ** 70)]  # past 64 bits: orjson refuses it
    written = _written(monkeypatch)
    assert encode_routed(records) == json.dumps(records, separators=(",", ":")).encode()
    assert written == {}
