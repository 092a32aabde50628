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


# -- a columnar part: its meter-days' texts as one array ------------------------------

DAY_TEXTS = ['{"meter":"1SAG1100042062","values":[1,2.5]}', '{"meter":"1SAG1100042063"}',
             "{}", '{"meter":"1SAG1100042064","values":[]}']


@pytest.mark.parametrize("texts", [[], DAY_TEXTS[:1], DAY_TEXTS, tuple(DAY_TEXTS),
                                   ["", "", ""], ["x" * 100_000, "y"]])
def test_a_columnar_part_is_its_texts_as_one_array(texts: list[str] | tuple[str, ...]) -> None:
    """D5: the part delivered is the meter-days as routed, in their order,
    one JSON array; the C's join writes the bytes Python's would."""
    from gateway.core.native import native

    expected = ("[" + ",".join(texts) + "]").encode()
    assert canonical.encode_days(texts) == expected
    assert native is not None and native.join_texts(texts) == expected  # the C, not the fallback
    if texts and texts[0].startswith("{"):
        assert json.loads(canonical.encode_days(texts)) == [json.loads(t) for t in texts]


@pytest.mark.parametrize("odd", ["caf\u00e9", "\u20ac", "\U0001f600", 7, b"{}", None])
def test_a_part_with_a_text_the_c_does_not_take_is_joined_in_python(odd: Any) -> None:
    """A text past ASCII (or not a str at all) is left to Python: the same
    bytes (UTF-8) or the same error, never a text dropped or mangled."""
    from gateway.core.native import native

    texts = [DAY_TEXTS[0], odd, DAY_TEXTS[1]]
    assert native is not None and native.join_texts(texts) is None
    if isinstance(odd, str):
        assert canonical.encode_days(texts) == ("[" + ",".join(texts) + "]").encode()
    else:
        with pytest.raises(TypeError):
            canonical.encode_days(texts)


def test_join_texts_takes_a_list_or_a_tuple_only() -> None:
    from gateway.core.native import native

    assert native is not None
    with pytest.raises(TypeError):
        native.join_texts(iter(DAY_TEXTS))  # type: ignore[arg-type]
    assert canonical.encode_days(iter(DAY_TEXTS)) == (  # type: ignore[arg-type]
        "[" + ",".join(DAY_TEXTS) + "]").encode()  # the fallback joins any iterable
