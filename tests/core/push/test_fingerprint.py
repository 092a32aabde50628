"""D1 idempotency: a per-record batch's fingerprint, and a tenant's part of
it, are the same bytes whether orjson or the standard library encodes them
(gateway.core.push.records: batch_fingerprint, encode_routed). A re-post of
the same batch must match the fingerprint stored for it, whichever path
computed each."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.push.canonical import _orjson_digest, batch_fingerprint, encode_routed

RECORD = {"meter": "1SAG1100000001", "timestamp": "2026-12-04T00:15:00+00:00",
          "obis": "1-0:1.8.0", "unit": "kWh", "quality": "01", "value": 12.5}


def both(records: list[Any], posted: str) -> tuple[str, str]:
    """(the fingerprint given the posted body, the standard library's)."""
    return (batch_fingerprint("b-1", records, posted.encode("utf-8", "surrogatepass")),
            batch_fingerprint("b-1", records))


def test_a_plain_batch_takes_the_fast_path_and_gets_the_same_fingerprint() -> None:
    records = [dict(RECORD, value=v) for v in (0, 1, 12.5, 0.0001, 123456.75, -3, True, None)]
    posted = json.dumps({"batch_id": "b-1", "records": records})
    assert _orjson_digest("b-1", records, posted.encode()) is not None
    fast, exact = both(records, posted)
    assert fast == exact


# Each case is one reason orjson's bytes differ from the standard library's;
# every guard of _orjson_digest is needed by one of them.
@pytest.mark.parametrize(("value", "posted"), [
    (math.nan, "NaN"),                 # orjson writes null
    (math.inf, "Infinity"),
    (-math.inf, "-Infinity"),
    (math.inf, "1e999"),               # overflows: an exponent in the text
    (math.inf, "1" + "0" * 400),       # overflows: a long run of digits
    (2 ** 70, str(2 ** 70)),           # past 64 bits: orjson refuses it
    (0.00005, "0.00005"),              # 5e-05 against 0.00005
    (1.5e-7, "0.00000015"),            # 1.5e-07 against 1.5e-7
    ("kWh\x7f", '"kWh\\u007f"'),       # DEL: escaped by one, not the other
    ("m\u00b3", '"m\\u00b3"'),         # non-ASCII: escaped by one only
    ("\u20ac", '"\u20ac"'),
])
def test_what_orjson_writes_otherwise_falls_back(value: Any, posted: str) -> None:
    records = [dict(RECORD, value=value)]
    text = json.dumps({"batch_id": "b-1", "records": [dict(RECORD, value=0)]}).replace(
        '"value": 0', f'"value": {posted}')
    fast, exact = both(records, text)
    assert fast == exact
    assert _orjson_digest("b-1", records, text.encode()) is None


_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2 ** 80), max_value=2 ** 80)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=6), _json, max_size=5), max_size=6),
       st.booleans())
def test_the_fingerprint_is_the_same_on_either_path(records: list[Any], ascii_: bool) -> None:
    posted = json.dumps({"batch_id": "b-1", "records": records}, ensure_ascii=ascii_)
    parsed = json.loads(posted)["records"]
    fast, exact = both(parsed, posted)
    assert fast == exact


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(
    st.sampled_from(["meter", "timestamp", "value", "unit", "ean"]),
    st.integers(min_value=-(2 ** 70), max_value=2 ** 70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)), max_size=6))
def test_a_part_is_encoded_as_the_standard_library_would(records: list[Any]) -> None:
    assert encode_routed(records) == json.dumps(records, separators=(",", ":")).encode()
