"""Syntax of the identifiers the shared systems carry (DOMAIN.md, "Data").

EAN-18 (GSRN) and GLN-13 use the GS1 mod-10 check digit: weights 3, 1, 3, ...
from the rightmost data digit; check = (10 - S mod 10) mod 10.
"""

from __future__ import annotations

import re
from collections.abc import Callable

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


def is_valid_ean(value: str) -> bool:
    """An 18-digit GSRN access-point id with a correct check digit.

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


def is_valid_gln(value: str) -> bool:
    return _valid_gs1(value, 13)


def is_valid_meter_serial(value: str) -> bool:
    return _meter(value) is not None


def is_plain_id(value: str) -> bool:
    """Ids of tickets, assets, portal requests: short, no separators that
    could mean something to a path or a query."""
    return bool(_PLAIN_ID.fullmatch(value))


def is_valid_nrn(value: str) -> bool:
    """A Belgian national register number: YYMMDD + 3-digit serial + 2 check
    digits = 97 - (first nine digits mod 97); for births from 2000 the nine
    digits are prefixed with 2."""
    if len(value) != 11 or not _DIGITS.fullmatch(value):
        return False
    body, check = int(value[:9]), int(value[9:])
    return check in (97 - body % 97, 97 - int("2" + value[:9]) % 97)


def with_nrn_check(first_nine: str) -> str:
    return first_nine + f"{97 - int(first_nine) % 97:02d}"


_VALIDATORS: dict[str, Callable[[str], bool]] = {
    "ean": is_valid_ean,
    "meter": is_valid_meter_serial,
    "person": is_valid_nrn,
}


# decide()'s hot path calls the regex itself where a regex is the whole check:
# its match (truthy) or None, one Python call less than the bool wrappers.
_SYNTAX: dict[str, Callable[[str], object]] = {**_VALIDATORS, "meter": _meter}


def id_syntax(kind: str) -> Callable[[str], object]:
    """The syntax check of the ids of a resource kind (plain ids by default):
    its result is truthy exactly when :func:`is_valid_resource_id` is True."""
    return _SYNTAX.get(kind, _PLAIN_ID.fullmatch)


def is_valid_resource_id(kind: str, value: str) -> bool:
    return _VALIDATORS.get(kind, is_plain_id)(value)
