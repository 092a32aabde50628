"""The request event's fast encoder writes what canonical() writes (format
§3), for every value a request event can hold, and refuses what canonical()
refuses."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit import RequestEvent
from gateway.audit import _chain as ac
from gateway.audit._format import canonical, canonical_request
from gateway.audit._sink import AuditWriteFailed

_text = st.text(max_size=40)  # any code point but lone surrogates, controls too
_maybe = st.none() | _text

_events = st.builds(
    RequestEvent, incident=_text, tenant=_text, principal=_maybe, cert_serial=_maybe,
    cert_fingerprint=_maybe, method=_text, route=_maybe, upstream=_text,
    decision=st.sampled_from(["allow", "deny"]), reason=_text,
    status=st.integers(100, 599), resources=st.lists(_text, max_size=3).map(tuple),
    bytes_in=st.integers(0, 2**40), bytes_out=st.integers(0, 2**40),
    classification=_maybe)


@given(_events, st.floats(1e9, 4e9), st.integers(1, 2**53),
       st.text(alphabet="0123456789abcdef", min_size=64, max_size=64))
@settings(max_examples=300, deadline=None)
def test_the_same_bytes_as_canonical(event: RequestEvent, ts: float, seq: int,
                                     prev: str) -> None:
    fields = {"ts": ts, **event.as_record(), "seq": seq, "prev": prev}
    assert canonical_request(fields) == canonical(fields)


@pytest.mark.parametrize("ts", [math.nan, math.inf, -math.inf])
async def test_a_time_that_is_not_a_number_is_refused(
        tmp_path: Path, key: Ed25519PrivateKey, kid: str, ts: float) -> None:
    # orjson would write it as null; canonical() refuses it (§3): so does this.
    log = ac.ChainedAuditLog(tmp_path / "audit.jsonl", key, kid, clock=lambda: ts)
    event = RequestEvent(incident="i", tenant="ores", principal=None, cert_serial=None,
                         cert_fingerprint=None, method="GET", route=None, upstream="none",
                         decision="deny", reason="no-route", status=404, resources=(),
                         bytes_in=0, bytes_out=0, classification=None)
    with pytest.raises(AuditWriteFailed, match="not encodable"):
        log.record_soon(event)
    assert log.failures == 1
    log.close()
