from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.identifiers import (
    ean_reference,
    gs1_check_digit,
    gsrn_reference,
    id_syntax,
    is_valid_ean,
    is_valid_gln,
    is_valid_gsrn,
    is_valid_meter_serial,
    is_valid_nrn,
    is_valid_resource_id,
    meter_reference,
    obis_key,
    obis_units,
    with_check_digit,
    with_nrn_check,
)

# Each check as the gateway calls it (in C where gateway.core._native was
# built) and its Python reference: both are held to every rule here.
EANS = (is_valid_ean, ean_reference)
GSRNS = (is_valid_gsrn, gsrn_reference)
METERS = (is_valid_meter_serial, meter_reference)


def test_domain_example_ean() -> None:
    # DOMAIN.md: 541448860012075359 -> S = 121 -> check digit 9
    assert gs1_check_digit("54144886001207535") == 9
    for ean_ok in EANS:
        assert ean_ok("541448860012075359")


def test_demo_glns_are_valid() -> None:
    for gln in ("5410000000019", "5410000000026", "5410000000033"):
        assert is_valid_gln(gln)


@given(st.text(alphabet="0123456789", min_size=17, max_size=17), st.integers(0, 16),
       st.integers(1, 9))
def test_any_single_digit_change_fails(data: str, pos: int, delta: int) -> None:
    ean = with_check_digit(data)
    changed = ean[:pos] + str((int(ean[pos]) + delta) % 10) + ean[pos + 1:]
    for gsrn_ok, ean_ok in zip(GSRNS, EANS, strict=True):
        assert gsrn_ok(ean)
        assert not gsrn_ok(changed)
        assert ean_ok(ean) is ean.startswith("54")


@given(st.text(alphabet="0123456789", min_size=17, max_size=17), st.integers(0, 15))
def test_adjacent_swap_fails_unless_digits_equal_or_differ_by_5(data: str, pos: int) -> None:
    ean = with_check_digit(data)
    a, b = ean[pos], ean[pos + 1]
    swapped = ean[:pos] + b + a + ean[pos + 2:]
    # GS1 mod 10 misses a swap only when the digits are equal or differ by 5.
    if a != b and abs(int(a) - int(b)) != 5:
        assert not any(gsrn_ok(swapped) for gsrn_ok in GSRNS)


@pytest.mark.parametrize(("ean_ok", "meter_ok"), list(zip(EANS, METERS, strict=True)))
def test_malformed_ids(ean_ok: Callable[[str], bool], meter_ok: Callable[[str], bool]) -> None:
    assert not ean_ok("54144886001207535")  # 17 digits
    assert not ean_ok("54144886001207535X")
    assert not ean_ok(" 541448860012075359")
    assert not ean_ok("551448860012075359")  # another country's prefix (D2)
    assert meter_ok("1SAG1100042062")
    assert meter_ok("123456") and meter_ok("A" * 20)
    assert not meter_ok("12345") and not meter_ok("A" * 21)
    assert not meter_ok("1sag1100042062")
    assert not meter_ok("../1SAG")


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
    for ean_ok, gsrn_ok in zip(EANS, GSRNS, strict=True):
        assert not ean_ok(arabic_indic) and not gsrn_ok(arabic_indic)
        assert not ean_ok("54144886001207535" + chr(0x669))
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
    assert is_valid_gsrn(value) is _former_is_valid_ean(value)
    assert is_valid_ean(value) is (_former_is_valid_ean(value) and value.startswith("54"))


@pytest.mark.parametrize("data", ["87123456789012345", "40123456789012345",
                                  "05414488600120753", "45144886001207535"])
def test_an_access_point_outside_belgium_is_refused(data: str) -> None:
    """DOMAIN.md "Data": a Belgian access point's EAN starts with 54 (GS1
    Belgium and Luxembourg); the GSRN itself is well formed."""
    ean = with_check_digit(data)
    assert is_valid_gsrn(ean)
    assert not is_valid_ean(ean)
    assert not is_valid_resource_id("ean", ean) and not id_syntax("ean")(ean)


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
    for nine in ("000101001", "991231998", "450615123", "120229789"):
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


def _nrn(birth: str, serial: str = "123", century: int = 1900) -> str:
    nine = birth + serial
    return nine + f"{97 - int(nine if century == 1900 else '2' + nine) % 97:02d}"


@pytest.mark.parametrize(("birth", "century"), [
    ("850730", 1900), ("000229", 2000),  # 2000 was a leap year
    ("960229", 1900), ("040229", 2000), ("991231", 1900), ("250101", 2000),
    ("852730", 1900), ("854730", 1900), ("053215", 2000), ("055201", 2000),  # BIS: +20, +40
    ("852101", 1900), ("854101", 1900),  # BIS January: the first month past each offset
])
def test_a_plausible_birth_date_in_either_century(birth: str, century: int) -> None:
    """D8: the first six digits are the birth date, YYMMDD; the check digits
    tell the century."""
    assert is_valid_nrn(_nrn(birth, century=century))


@pytest.mark.parametrize(("birth", "century"), [
    ("850030", 1900), ("851330", 1900), ("852030", 1900), ("853330", 1900),  # months
    ("854030", 1900), ("855330", 1900), ("859930", 1900),
    ("850700", 1900), ("850732", 1900), ("850431", 1900),  # days
    ("010229", 2000), ("000229", 1900),  # 29 February: 2001 and 1900 were not leap years
    ("860229", 1900),  # nor was 1986
    ("052230", 2000), ("054230", 2000),  # BIS February has no 30th either
])
def test_an_impossible_birth_date_is_refused(birth: str, century: int) -> None:
    assert not is_valid_nrn(_nrn(birth, century=century))


@pytest.mark.parametrize(("code", "key", "units"), [
    ("1-0:1.8.1", "1-0:1.8.1", {"kWh"}), ("1-0:1.8.1*255", "1-0:1.8.1", {"kWh"}),
    ("1-0:1.8.1.255", "1-0:1.8.1", {"kWh"}), ("1-0:2.8.2*1", "1-0:2.8.2*1", {"kWh"}),
    ("1-0:1.29.0", "1-0:1.29.0", {"kWh"}), ("1-0:1.6.0", "1-0:1.6.0", {"kW"}),
    ("1-0:21.7.0", "1-0:21.7.0", {"kW"}), ("0-1:24.2.3", "0-1:24.2.3", {"m3"}),
    ("7-0:3.0.0", "7-0:3.0.0", {"m3"}), ("8-0:1.0.0", "8-0:1.0.0", {"m3"}),
    ("9-0:1.0.0", "9-0:1.0.0", {"m3"}),  # water, as 8
    ("0-1:24.1.0", "0-1:24.1.0", set()),  # an M-Bus channel, but not its volume
    ("1-0:1.2.0", "1-0:1.2.0", set()),  # active, but neither energy nor power
    ("15-255:255.255.255*254", "15-255:255.255.255*254", set()),
    ("1-0:3.8.1", "1-0:3.8.1", set()),  # reactive energy: no unit the format has
    ("0-0:96.1.0", "0-0:96.1.0", set()),  # an equipment identifier, not a reading
])
def test_obis_codes_in_both_spellings_and_their_units(code: str, key: str,
                                                     units: set[str]) -> None:
    """D5: one spelling per code (the five-group form, F = 255 meaning unused),
    and the unit of the quantity it names."""
    assert obis_key(code) == key
    assert obis_units(key) == units


@pytest.mark.parametrize("code", [
    "16-0:1.8.1", "1-256:1.8.1", "1-0:256.8.1", "1-0:1.256.1", "1-0:1.8.256",
    "1-0:1.8.1*256", "1-0:1.8.1.256", "01-0:1.8.1", "1-0:1.08.1", "1-0:1.8", "1-0:1.8.1*",
    "1-0:1.8.1*255*1", "1-0:1.8.1 ", "1-0:1.8.\u0661", "1-0:1.8.x", "", "1:0-1.8.1",
])
def test_malformed_or_out_of_range_obis_codes(code: str) -> None:
    assert obis_key(code) is None


@pytest.mark.parametrize("value,valid", [
    ("5410000000019", True), ("5410000000026", True),
    ("5410000000018", False), ("541000000001", False), ("54100000000190", False),
    ("541000000001X", False), ("".join(chr(0x660 + int(d)) for d in "5410000000019"), False),
])
def test_glns(value: str, valid: bool) -> None:
    assert is_valid_gln(value) is valid
