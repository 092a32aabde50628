"""Syntax of the identifiers the shared systems carry (DOMAIN.md, "Data").

EAN-18 (GSRN) and GLN-13 use the GS1 mod-10 check digit: weights 3, 1, 3, ...
from the rightmost data digit; check = (10 - S mod 10) mod 10. Every shared
system behind the gateway is Belgian, so an access point's EAN is a Belgian
one: GS1 Belgium and Luxembourg's prefix ``54``.

A national register number carries its holder's birth date (D8); an OBIS
code names what a reading measures, and so the unit it must be in (D5).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable

from gateway.core.native import native as _native

_DIGITS = re.compile(r"[0-9]+")
_METER = re.compile(r"[0-9A-Z]{6,20}")
_PLAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_meter = _METER.fullmatch


def gs1_check_digit(data_digits: str) -> int:
    """Byte arithmetic in C (slices and ``sum``) instead of a Python loop per
    digit: 0.5 µs instead of 2.5 µs, on the path of every EAN decision."""
    if not (data_digits.isascii() and data_digits.isdigit()):
        raise ValueError("GS1 data digits must be ASCII digits 0-9")
    raw = data_digits.encode("ascii")
    three, one = raw[-1::-2], raw[-2::-2]  # weight 3 from the rightmost data digit
    total = 3 * (sum(three) - 48 * len(three)) + sum(one) - 48 * len(one)
    return (10 - total % 10) % 10


def with_check_digit(data_digits: str) -> str:
    return data_digits + str(gs1_check_digit(data_digits))


def _valid_gs1(value: str, length: int) -> bool:
    # isascii() first: str.isdigit() alone would take other scripts' digits.
    if len(value) != length or not (value.isascii() and value.isdigit()):
        return False
    return gs1_check_digit(value[:-1]) == ord(value[-1]) - 48


def ean_reference(value: str) -> bool:
    """A Belgian access point's EAN: an 18-digit GSRN with a correct check
    digit and GS1 Belgium and Luxembourg's prefix ``54`` (DOMAIN.md, "Data";
    D2: an access point of another country is no access point here).

    The reference of :func:`is_valid_ean`, which is this or its C twin in
    gateway/core/_native.c where that was built (tests/core/test_native.py
    compares them)."""
    return value[:2] == "54" and gsrn_reference(value)


def gsrn_reference(value: str) -> bool:
    """An 18-digit GSRN with a correct check digit, of any GS1 prefix (the
    reference of :func:`is_valid_gsrn`, as above).

    Equal to ``_valid_gs1(value, 18)`` (test_identifiers checks), computed
    without a loop or a slice: on the path of every EAN decision (the per-request
    budget). The rule is sum(w * d) % 10 == 0 over all 18 digits, weight 1
    for the check digit and every other digit from it, 3 for the rest. Read
    in base 11, the digits weigh 11^k, which is 1 modulo 10: ``int(value, 11)``
    is A = S1 + S3 (mod 10), S1 and S3 the sums of the digits of weight 1 and
    3. In base 19 they weigh 19^k, (-1)^k modulo 10: D = S1 - S3. And
    S1 + 3 S3 = 2A - D. (int() also takes signs, spaces and underscores; the
    ASCII digits test comes first.)"""
    # isascii() first: str.isdigit() alone would take other scripts' digits.
    if len(value) != 18 or not (value.isascii() and value.isdigit()):
        return False
    return (2 * int(value, 11) - int(value, 19)) % 10 == 0


# On the path of every EAN decision (the per-request budget, bench/README.md):
# the check in C where it was built, else the references above.
is_valid_ean: Callable[[str], bool] = _native.is_valid_ean if _native else ean_reference
is_valid_gsrn: Callable[[str], bool] = _native.is_valid_gsrn if _native else gsrn_reference


def is_valid_gln(value: str) -> bool:
    return _valid_gs1(value, 13)


def meter_reference(value: str) -> bool:
    """A meter's serial (the reference of :func:`is_valid_meter_serial`,
    which is this or its C twin, as the EAN check above)."""
    return _meter(value) is not None


is_valid_meter_serial: Callable[[str], bool] = (_native.is_valid_meter_serial if _native
                                                else meter_reference)


def is_plain_id(value: str) -> bool:
    """Ids of tickets, assets, portal requests: short, no separators that
    could mean something to a path or a query."""
    return bool(_PLAIN_ID.fullmatch(value))


def is_valid_nrn(value: str) -> bool:
    """A Belgian national register number: YYMMDD + 3-digit serial + 2 check
    digits = 97 - (first nine digits mod 97); for births from 2000 the nine
    digits are prefixed with 2, which is how the check digits tell the
    century. The birth date must exist in that century: month 1-12, or 21-32
    and 41-52 in a BIS number (a person not in the register: the month plus
    20 or 40), the day within that month (29 February in leap years only)."""
    if len(value) != 11 or not _DIGITS.fullmatch(value):
        return False
    check = int(value[9:])
    if check == 97 - int(value[:9]) % 97:
        century = 1900
    elif check == 97 - int("2" + value[:9]) % 97:
        century = 2000
    else:
        return False
    month, day = int(value[2:4]), int(value[4:6])
    if month > 40:
        month -= 40
    elif month > 20:
        month -= 20
    if not 1 <= month <= 12:
        return False
    return 1 <= day <= calendar.monthrange(century + int(value[:2]), month)[1]


def with_nrn_check(first_nine: str) -> str:
    return first_nine + f"{97 - int(first_nine) % 97:02d}"


# An OBIS code (IEC 62056-61): A-B:C.D.E, optionally a sixth group F as
# "*F" or ".F"; each group a number without leading zeros.
_GROUP = r"(0|[1-9][0-9]{0,2})"
_OBIS = re.compile(rf"{_GROUP}-{_GROUP}:{_GROUP}\.{_GROUP}\.{_GROUP}(?:[*.]{_GROUP})?")
# Electricity (A = 1): the active-energy quantities (C: total, import, export,
# per phase) over time integrals (D 8, 9, 10, 29: registers and load profiles)
# are energy; demand and instantaneous values (D 4-7) are power.
_ACTIVE = frozenset({1, 2, 15, 16, 21, 22, 41, 42, 61, 62})
_ENERGY_D = frozenset({8, 9, 10, 29})
_POWER_D = frozenset({4, 5, 6, 7})
_KWH, _KW, _M3 = frozenset({"kWh"}), frozenset({"kW"}), frozenset({"m3"})
_NO_UNIT: frozenset[str] = frozenset()


def obis_key(code: str) -> str | None:
    """The code's one spelling, ``A-B:C.D.E`` (``*F`` kept when F is not 255,
    "not used"), or None when it is no OBIS code: A (the medium) 0-15, every
    other group 0-255. ``1-0:1.8.1``, ``1-0:1.8.1*255`` and ``1-0:1.8.1.255``
    are one code, so two readings of it are one reading twice."""
    found = _OBIS.fullmatch(code)
    if found is None:
        return None
    a, b, c, d, e, f = found.groups()
    if int(a) > 15 or max(int(b), int(c), int(d), int(e), int(f or 0)) > 255:
        return None
    key = f"{a}-{b}:{c}.{d}.{e}"
    return key if f is None or f == "255" else f"{key}*{f}"


def obis_units(key: str) -> frozenset[str]:
    """The units a reading of the OBIS code ``key`` (from :func:`obis_key`)
    may be in: electricity energy in kWh and power in kW; gas (A = 7, or an
    M-Bus channel, ``0-n:24.2.x``, as a Belgian meter reports it) and water
    (A = 8, 9) volumes in m³. Any other quantity: none is known to fit."""
    medium, rest = key.split("-", 1)
    group_c, group_d = rest.split(":", 1)[1].split(".")[:2]
    a, c, d = int(medium), int(group_c), int(group_d)
    if a == 1 and c in _ACTIVE:
        return _KWH if d in _ENERGY_D else _KW if d in _POWER_D else _NO_UNIT
    if a in (7, 8, 9) or (a == 0 and c == 24 and d == 2):
        return _M3
    return _NO_UNIT


_VALIDATORS: dict[str, Callable[[str], bool]] = {
    "ean": is_valid_ean,
    "meter": is_valid_meter_serial,
    "person": is_valid_nrn,
}


# decide()'s hot path calls the regex itself where a regex is the whole check
# and no C check was built: its match (truthy) or None, one Python call less
# than the bool wrapper.
_SYNTAX: dict[str, Callable[[str], object]] = {
    **_VALIDATORS, "meter": is_valid_meter_serial if _native else _meter}


def id_syntax(kind: str) -> Callable[[str], object]:
    """The syntax check of the ids of a resource kind (plain ids by default):
    its result is truthy exactly when :func:`is_valid_resource_id` is True."""
    return _SYNTAX.get(kind, _PLAIN_ID.fullmatch)


def is_valid_resource_id(kind: str, value: str) -> bool:
    return _VALIDATORS.get(kind, is_plain_id)(value)
