"""The push body caps, decided before any parse (D1 availability): each form
within its own cap, a body past one cap only if it cannot be that form."""

from __future__ import annotations

from gateway.core.push.size import MiB, PushSizes, oversized

DAYS = b'{"format":"meter-days/v1","batch_id":"B","meter_days":['
RECORDS = b'{"batch_id":"B","records":['


def body(head: bytes, size: int) -> bytes:
    """``head`` padded with spaces to exactly ``size`` bytes (then closed)."""
    return head + b" " * (size - len(head) - 2) + b"]}"


def test_within_both_caps_every_body_is_parsed() -> None:
    sizes = PushSizes(100, 200)
    assert not oversized(body(RECORDS, 100), sizes)
    assert not oversized(body(b'{"x":"\\u0041",', 100), sizes)


def test_past_the_per_record_cap_only_a_literal_columnar_batch_passes() -> None:
    sizes = PushSizes(100, 200)
    assert oversized(body(RECORDS, 101), sizes)
    assert not oversized(body(DAYS, 101), sizes)
    assert not oversized(body(DAYS, 200), sizes)
    # A per-record batch in disguise: it names the format but holds records.
    assert oversized(body(DAYS + b'{"records":1}', 150), sizes)
    # An escape could spell a key or the format's value: refused unparsed.
    assert oversized(body(DAYS + b'"\\u0072ecords"', 150), sizes)
    assert oversized(body(b'{"format":"meter-days\\/v1","records":[', 150), sizes)


def test_past_both_caps_nothing_passes() -> None:
    sizes = PushSizes(100, 200)
    assert oversized(body(DAYS, 201), sizes)
    assert oversized(body(RECORDS, 201), sizes)


def test_a_booking_is_held_to_the_per_record_cap() -> None:
    sizes = PushSizes(100, 200)
    assert not oversized(body(b'{"request":"R","x":[', 100), sizes, columnar_allowed=False)
    assert oversized(body(DAYS, 101), sizes, columnar_allowed=False)


def test_a_columnar_cap_below_the_per_record_cap_holds_for_columnar_batches() -> None:
    sizes = PushSizes(200, 100)
    assert not oversized(body(DAYS, 100), sizes)
    assert oversized(body(DAYS, 101), sizes)
    assert not oversized(body(RECORDS, 150), sizes)
    assert oversized(body(RECORDS + b'"\\u0041"', 150), sizes)
    assert oversized(body(RECORDS, 201), sizes)


def test_the_refusal_names_both_limits() -> None:
    detail = PushSizes(16 * MiB, 24 * MiB).detail()
    assert "16 MiB" in detail and "limits.max_push_records_mb" in detail
    assert "24 MiB" in detail and "limits.max_push_meter_days_mb" in detail
