"""How large a pushed body may be (D1 availability), decided before it is parsed.

A push is parsed whole, so its peak memory grows with its body: measured in a
`gateway serve` process, about 12x the body for a per-record batch (a dict and
five strings per reading), 8x for a daily ``meter-days/v1`` batch (its values
stay text) and up to 16x for one that repeats a meter's registers over many
days (bench/README.md, "Push memory"). Each form has its own cap, by default
where one push stays within a quarter of the memory budget:

- a body within both caps is parsed;
- a body within one form's cap only is parsed only if it cannot be the other
  form: past the per-record cap it must name ``"meter-days/v1"`` and hold no
  ``"records"`` key, past the columnar cap it must not name the format; in
  both cases without a backslash, so that every key and that value are spelt
  literally (an escape cannot disguise them);
- a body over both caps is refused whatever it is.

A Connect My Home booking (one household) is held to the per-record cap.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.push.days import FORMAT

MiB = 1024 * 1024
_FORMAT = f'"{FORMAT}"'.encode()
_RECORDS_KEY = b'"records"'


@dataclass(frozen=True, slots=True)
class PushSizes:
    records_bytes: int  # a per-record batch (no `format`), a booking
    meter_days_bytes: int  # a `meter-days/v1` batch

    @property
    def largest(self) -> int:
        return max(self.records_bytes, self.meter_days_bytes)

    def detail(self) -> str:
        """What a refused pusher is told: the limits, by name and value."""
        return (f"A pushed body may have at most {_mib(self.records_bytes)} for a per-record "
                f"batch or a booking (limits.max_push_records_mb) and "
                f"{_mib(self.meter_days_bytes)} for a {FORMAT} batch "
                f"(limits.max_push_meter_days_mb); split the batch.")


def _mib(n: int) -> str:
    return f"{n / MiB:g} MiB"


def oversized(body: bytes, sizes: PushSizes, *, columnar_allowed: bool = True) -> bool:
    """True when ``body`` must be refused (413) unparsed."""
    size = len(body)
    records_ok = size <= sizes.records_bytes
    days_ok = columnar_allowed and size <= sizes.meter_days_bytes
    if records_ok and (days_ok or not columnar_allowed):
        return False
    if not records_ok and not days_ok:
        return True
    # SECURITY: D1. Only one form may be this large: the body must be unable
    # to be the other (checked at C speed over the bytes, before any parse).
    if b"\\" in body:
        return True
    if days_ok:  # past the per-record cap
        return _FORMAT not in body or _RECORDS_KEY in body
    return _FORMAT in body  # past the columnar cap
