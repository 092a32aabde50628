"""The request event's fast encoder writes what canonical() writes (format
§3), for every value a request event can hold, and refuses what canonical()
refuses."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit import RequestEvent
from gateway.audit import _chain as ac
from gateway.audit._format import canonical, canonical_request, line_hash, seal
from gateway.audit._sink import AuditWriteFailed

_text = st.text(max_size=40)  # any code point but lone surrogates, controls too
_maybe = st.none() | _text

_events = st.builds(
    RequestEvent, incident=_text, tenant=_text, principal=_maybe, cert_serial=_maybe,
    cert_fingerprint=_maybe, method=_text, route=_maybe, upstream=_text,
    decision=st.sampled_from(["allow", "deny"]), reason=_text,
    status=st.integers(100, 599), resources=st.lists(_text, max_size=3).map(tuple),
    bytes_in=st.integers(0, 2**40), bytes_out=st.integers(0, 2**40),
    classification=_maybe, canary=st.booleans())


@given(_events, st.floats(1e9, 4e9), st.integers(1, 2**53),
       st.text(alphabet="0123456789abcdef", min_size=64, max_size=64))
@settings(max_examples=300, deadline=None)
def test_the_same_bytes_as_canonical(event: RequestEvent, ts: float, seq: int,
                                     prev: str) -> None:
    """The chain line's members, as the log hands them to the encoder, are
    the event's record with ts, seq and prev, in sorted order; written,
    they are canonical()'s bytes."""
    fields = event.chain_fields(ts, seq, prev)
    assert fields == {"ts": ts, **event.as_record(), "seq": seq, "prev": prev}
    assert list(fields) == sorted(fields)
    assert canonical_request(fields) == canonical(fields)


def test_a_line_written_through_the_log_is_canonical(tmp_path: Path, key: Ed25519PrivateKey,
                                                     kid: str) -> None:
    """What record_soon chains and writes is canonical() of the event's
    record with ts, seq and prev, sealed with its hash (format §3, §4)."""
    log = ac.ChainedAuditLog(tmp_path / "audit.jsonl", key, kid, clock=lambda: 1.5e9)
    event = RequestEvent(incident="i", tenant="ores", principal="api", cert_serial="0a",
                         cert_fingerprint="ff", method="GET", route="/hes/meters/{id}",
                         upstream="hes", decision="allow", reason="checked", status=200,
                         resources=("m1",), bytes_in=0, bytes_out=3, classification="C2",
                         canary=True)
    head = log.head
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(_recorded(log, event))
    finally:
        loop.close()
    log.close()
    first = (tmp_path / "audit.jsonl").read_bytes().splitlines()[0]
    body = canonical({"ts": 1.5e9, **event.as_record(), "seq": 1, "prev": head})
    assert first == seal(body, line_hash(head, body)).rstrip(b"\n")


async def _recorded(log: ac.ChainedAuditLog, event: RequestEvent) -> None:
    await log.record_soon(event)


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
