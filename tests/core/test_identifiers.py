from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.identifiers import (
    gs1_check_digit,
    id_syntax,
    is_valid_ean,
    is_valid_gln,
    is_valid_meter_serial,
    is_valid_nrn,
    is_valid_resource_id,
    with_check_digit,
    with_nrn_check,
)


def test_domain_example_ean() -> None:
    # DOMAIN.md: 541448860012075359 -> S = 121 -> check digit 9
    assert gs1_check_digit("54144886001207535") == 9
    assert is_valid_ean("541448860012075359")


def test_demo_glns_are_valid() -> None:
    for gln in ("5410000000019", "5410000000026", "5410000000033"):
        assert is_valid_gln(gln)


@given(st.text(alphabet="0123456789", min_size=17, max_size=17), st.integers(0, 16),
       st.integers(1, 9))
def test_any_single_digit_change_fails(data: str, pos: int, delta: int) -> None:
    ean = with_check_digit(data)
    changed = ean[:pos] + str((int(ean[pos]) + delta) % 10) + ean[pos + 1:]
    assert is_valid_ean(ean)
    assert not is_valid_ean(changed)


@given(st.text(alphabet="0123456789", min_size=17, max_size=17), st.integers(0, 15))
def test_adjacent_swap_fails_unless_digits_equal_or_differ_by_5(data: str, pos: int) -> None:
    ean = with_check_digit(data)
    a, b = ean[pos], ean[pos + 1]
    swapped = ean[:pos] + b + a + ean[pos + 2:]
    # GS1 mod 10 misses a swap only when the digits are equal or differ by 5.
    if a != b and abs(int(a) - int(b)) != 5:
        assert not is_valid_ean(swapped)


def test_malformed_ids() -> None:
    assert not is_valid_ean("54144886001207535")  # 17 digits
    assert not is_valid_ean("54144886001207535X")
    assert not is_valid_ean(" 541448860012075359")
    assert is_valid_meter_serial("1SAG1100042062")
    assert not is_valid_meter_serial("1sag1100042062")
    assert not is_valid_meter_serial("../1SAG")


def _reference_check_digit(data: str) -> int:
    """DOMAIN.md's rule, digit by digit: weights 3, 1, 3, ... from the right."""
    total = sum(int(ch) * (3 if i % 2 == 0 else 1) for i, ch in enumerate(reversed(data)))
    return (10 - total % 10) % 10


@given(st.text(alphabet="0123456789", min_size=1, max_size=40))
def test_check_digit_matches_the_digit_by_digit_rule(data: str) -> None:
    assert gs1_check_digit(data) == _reference_check_digit(data)


def test_digits_of_other_scripts_are_not_digits() -> None:
    arabic_indic = "".join(chr(0x660 + int(d)) for d in "541448860012075359")  # U+0660-9
    assert arabic_indic.isdigit() and len(arabic_indic) == 18
    assert not is_valid_ean(arabic_indic)
    assert not is_valid_ean("54144886001207535" + chr(0x669))
    with pytest.raises(ValueError):
        gs1_check_digit("5414488600120753" + chr(0x665))


def _former_is_valid_ean(value: str) -> bool:
    """is_valid_ean before the base-11/base-19 form: the check digit of the
    17 data digits, computed by gs1_check_digit."""
    if len(value) != 18 or not (value.isascii() and value.isdigit()):
        return False
    return gs1_check_digit(value[:-1]) == ord(value[-1]) - 48


# Near misses: the characters int() accepts besides digits (signs, spaces,
# underscores, letters of bases 11 and 19), other scripts' digits, a newline.
_EAN_LIKE = st.text(alphabet="0123456789+-_ aAbBiI\n\u0660\u0669\uff10", min_size=16,
                    max_size=20)
_EANS = st.builds(with_check_digit, st.text(alphabet="0123456789", min_size=17, max_size=17))


@given(st.one_of(_EAN_LIKE, _EANS, st.text(alphabet="0123456789", min_size=18, max_size=18),
                 st.text(max_size=20)))
def test_ean_check_equals_the_former_digit_by_digit_form(value: str) -> None:
    assert is_valid_ean(value) is _former_is_valid_ean(value)


@given(st.sampled_from(("ean", "meter", "person", "ticket", "cmh-request")),
       st.one_of(st.text(alphabet="0123456789ABCSGWRTaz._-/\n\u0660", max_size=24), _EANS,
                 st.text(max_size=70)))
def test_id_syntax_agrees_with_is_valid_resource_id(kind: str, value: str) -> None:
    """decide()'s hot path calls id_syntax(kind) (a regex's match for meters)."""
    assert bool(id_syntax(kind)(value)) is is_valid_resource_id(kind, value)


@given(st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZaz-\n\u0660\u00c9", max_size=24))
def test_meter_serial_is_the_regex(value: str) -> None:
    assert is_valid_meter_serial(value) is (re.fullmatch(r"[0-9A-Z]{6,20}", value) is not None)


# -- national register numbers (D8) and GLNs ------------------------------------

def test_nrn_check_digits_for_both_centuries() -> None:
    """97 - (first nine mod 97); from 2000 on the nine digits get a leading 2."""
    assert with_nrn_check("850730033") == "85073003328"
    assert is_valid_nrn("85073003328")
    assert is_valid_nrn("01020312345")  # born 2001-02-03: 97 - 2010203123 mod 97
    assert is_valid_nrn("01020312316")  # the same digits read as 1901
    for nine in ("000101001", "991231998", "450615123", "123456789"):
        nrn = with_nrn_check(nine)
        assert len(nrn) == 11 and is_valid_nrn(nrn)
        assert int(nrn[9:]) == 97 - int(nine) % 97


@pytest.mark.parametrize("value", [
    "85073003327", "85073003329", "01020312344", "01020312346",  # one off
    "8507300332", "850730033280", "", "8507300332A", " 85073003328",
    "".join(chr(0x660 + int(d)) for d in "85073003328"),  # other scripts' digits
])
def test_malformed_nrns(value: str) -> None:
    assert not is_valid_nrn(value)


@pytest.mark.parametrize("value,valid", [
    ("5410000000019", True), ("5410000000026", True),
    ("5410000000018", False), ("541000000001", False), ("54100000000190", False),
    ("541000000001X", False), ("".join(chr(0x660 + int(d)) for d in "5410000000019"), False),
])
def test_glns(value: str, valid: bool) -> None:
    assert is_valid_gln(value) is valid
