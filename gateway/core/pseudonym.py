"""Keyed pseudonyms for IT-provider tenants (D9).

Data given to IT companies is pseudonymised: each personal identifier in a
response becomes ``ps_<kind>_<32 letters>``, the first 16 bytes of
HMAC-SHA256(tenant key, kind NUL canonical value). One identifier always gives
one token per tenant, so joins still work; without the key nobody goes back,
and two providers' tokens (different keys) do not join with each other.

:meth:`Pseudonymiser.apply` edits a parsed JSON body in place: first by field
name (EANs, meter serials, e-mail, phone, national register numbers, names of
person-like objects, ...), then by pattern in every other string, number and
object key, so an identifier in free text or under an unexpected name does not
slip through.

Addresses keep only their area: street, house number, box and any other part
become tokens; ``postal_code`` and ``city`` stay. A Belgian postal code names
a municipality, the same area as the city, which does not single out a
household; the street and number do. An address given as one string becomes
one token. Tokens are letters and underscores only (hex spelled ``a``..``p``),
so no leak pattern can match inside one or borrow a digit from one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

MIN_KEY_BYTES = 32

# Identifiers that must never leave in clear. Phone numbers in the
# international forms (+32 ..., 0032 ...) and in the Belgian national ones as
# they are written (0470 12 34 56, 081/22.33.44, 02 123 45 67); national forms
# written otherwise are caught by field name.
LEAK_PATTERNS: Mapping[str, re.Pattern[str]] = MappingProxyType({
    # Starts only where a run of local-part characters starts: one scan per run,
    # not one per character (no quadratic time on a long blob).
    "email": re.compile(r"(?<![\w.%+-])[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}"),
    "ean": re.compile(r"(?<!\d)54\d{16}(?!\d)"),
    "national_register": re.compile(r"(?<!\d)\d{2}\.?\d{2}\.?\d{2}-?\d{3}\.?\d{2}(?!\d)"),
    "phone": re.compile(r"(?<![\w+])(?:\+|00)[1-9](?:[ ./()-]{0,2}\d){6,14}(?!\d)"),
    # D9: mobile 04xx xx xx xx, two-digit zones 0xx xx xx xx, one-digit zones
    # 0x xxx xx xx; one separator at most between groups, so a date such as
    # 01.01.2026 10:00 or a national register number is not taken for one.
    "phone_national": re.compile(
        r"(?<![\w+./-])(?:04\d{2}(?:[ ./-]?\d{2}){3}|0[1-9]\d(?:[ ./-]?\d{2}){3}"
        r"|0[2349][ ./-]?\d{3}(?:[ ./-]?\d{2}){2})(?![\w./-]?\d)"),
    "meter_serial": re.compile(r"\b[0-9][A-Z]{3}\d{10}\b"),
    # ISO 13616: country, two check digits, 11 to 30 letters and digits, written
    # whole or in groups of four ("BE68 5390 0754 7034"). A bank account in
    # free text is as personal as one under an "iban" field.
    "iban": re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?"
                       r"(?![A-Za-z0-9])"),
})
_PATTERN_KIND = {"email": "email", "ean": "ean", "national_register": "nrn", "phone": "phone",
                 "phone_national": "phone",
                 "meter_serial": "meter", "iban": "iban"}
# One pass finds the leftmost identifier of any kind; e-mail first, so an
# address whose local part is a number is one e-mail, not a number.
_ANY = re.compile("|".join(f"(?P<{name}>{p.pattern})" for name, p in LEAK_PATTERNS.items()))
_MAX_PASSES = 4

_KIND = re.compile(r"[a-z]{1,16}")
_TOKEN = re.compile(r"ps_[a-z]{1,16}_[a-p]{32}")
_HEX_AS_LETTERS = str.maketrans("0123456789abcdef", "abcdefghijklmnop")
_NOT_DIGIT = re.compile(r"[^0-9]")

_FIELDS: Mapping[str, str] = {
    **dict.fromkeys(("ean", "eans"), "ean"),
    **dict.fromkeys(("serial", "serials", "meter", "meters", "meter_serial", "meter_number"),
                    "meter"),
    **dict.fromkeys(("email", "e_mail", "email_address", "mail"), "email"),
    **dict.fromkeys(("phone", "phone_number", "telephone", "mobile", "gsm"), "phone"),
    **dict.fromkeys(("national_register", "national_register_number", "rrn", "nn", "nrn",
                     "niss", "insz", "ssin"), "nrn"),
    **dict.fromkeys(("street", "street_name", "house_number", "housenumber"), "street"),
    **dict.fromkeys(("first_name", "last_name", "full_name", "firstname", "lastname", "surname",
                     "given_name", "family_name", "birth_name", "maiden_name"), "name"),
    **dict.fromkeys(("date_of_birth", "birth_date", "birthdate"), "birth"),
    **dict.fromkeys(("iban", "bank_account"), "iban"),
    **dict.fromkeys(("cadastral_parcel", "parcel"), "parcel"),
}
# Kinds whose whole value is personal, whatever its shape. EANs and meter
# serials are not: a "meter" object also says the meter type.
_WHOLE_VALUE = frozenset({"email", "phone", "nrn", "street", "name", "birth", "iban", "parcel",
                          "address"})
_PERSONS = frozenset({"customer", "requester", "household", "contact", "person", "people",
                      "occupant", "resident", "reporter", "employee"})
_ADDRESSES = frozenset({"address", "addresses", "postal_address", "supply_address",
                        "billing_address", "home_address", "delivery_address"})
_AREA = frozenset({"postal_code", "postcode", "zip", "zip_code", "city", "municipality",
                   "commune", "country", "country_code", "region", "province"})


@dataclass(frozen=True, slots=True)
class _Where:
    """What the walk knows about the node it is in."""

    person: bool = False  # inside a person-like object: its "name" is personal
    whole: str | None = None  # every scalar below is an identifier of this kind
    items: str | None = None  # scalar items of this list are identifiers of this kind
    address: bool = False  # this object is an address: keep only the area


def _canonical(kind: str, value: str) -> str:
    """One spelling per identifier, so joins survive formatting differences."""
    value = value.strip()
    if kind == "email":
        return value.casefold()
    if kind in ("phone", "nrn"):
        digits = _NOT_DIGIT.sub("", value.replace("(0)", ""))
        if not digits:
            return value
        if kind == "phone" and value.startswith("+"):
            return "+" + digits
        if kind == "phone" and digits.startswith("00"):
            return "+" + digits[2:]
        return digits
    if kind in ("ean", "meter"):
        return value.upper()
    if kind == "iban":
        return "".join(value.split()).upper()  # printed in groups of four or not
    return " ".join(value.split())


def _text_of(value: Any) -> str | None:
    """The text a JSON scalar serialises to (None for null and booleans)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return json.dumps(value)
    # SECURITY: an unknown type could hide an identifier; refuse, don't skip.
    raise TypeError(f"not a JSON value: {type(value).__name__}")


class Pseudonymiser:
    """Replaces personal identifiers by keyed, stable pseudonyms (D9)."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
            raise ValueError(f"a pseudonym key needs at least {MIN_KEY_BYTES} bytes")
        self._key = key

    @classmethod
    def for_tenant(cls, master: bytes, tenant_id: str) -> Pseudonymiser:
        """A tenant's own key from one master secret (HKDF-Expand, one block)."""
        if not isinstance(master, bytes) or len(master) < MIN_KEY_BYTES:
            raise ValueError(f"a pseudonym master key needs at least {MIN_KEY_BYTES} bytes")
        info = b"gateway pseudonym key v1\0" + tenant_id.encode()
        return cls(hmac.new(master, info + b"\x01", hashlib.sha256).digest())

    def __repr__(self) -> str:
        return "Pseudonymiser(key=<hidden>)"  # SECURITY: the key never reaches a log

    def token(self, kind: str, value: str) -> str:
        """``ps_<kind>_<32 letters>``; stable per (key, kind, value). The kind
        is part of both the MAC input and the prefix: kinds never collide."""
        if not _KIND.fullmatch(kind):
            raise ValueError(f"pseudonym kind {kind!r} must be 1-16 lowercase letters")
        data = kind.encode() + b"\0" + _canonical(kind, value).encode("utf-8", "surrogatepass")
        digest = hmac.new(self._key, data, hashlib.sha256).digest()[:16]
        return f"ps_{kind}_{digest.hex().translate(_HEX_AS_LETTERS)}"

    def scrub_text(self, text: str) -> tuple[str, int]:
        """Replace every identifier the leak patterns find in ``text``."""
        result, count = text, 0
        for _ in range(_MAX_PASSES):
            # A token may complete a new match (a phone token followed by
            # "@example.be" reads as an e-mail): repeat until nothing matches.
            result, n = _ANY.subn(self._replace, result)
            if n == 0:
                return result, count
            count += n
        if _ANY.search(result) is None:
            return result, count
        # SECURITY: still matching after several passes: hide the whole text.
        return self.token("text", text), count + 1

    def _replace(self, match: re.Match[str]) -> str:
        return self.token(_PATTERN_KIND[str(match.lastgroup)], match.group())

    def _scalar(self, value: Any, kind: str | None) -> tuple[Any, int]:
        text = _text_of(value)
        if text is None:
            return value, 0
        if kind is not None:
            if not text or _TOKEN.fullmatch(text):
                return value, 0
            return self.token(kind, text), 1
        new, n = self.scrub_text(text)
        return (new, n) if n else (value, 0)

    def apply(self, body: Any) -> int:
        """Pseudonymise a parsed JSON body in place; returns the number of
        replacements. A bare scalar cannot be edited in place: if it holds an
        identifier this raises ValueError and the caller must withhold it."""
        if not isinstance(body, dict | list):
            if self._scalar(body, None)[1]:
                raise ValueError("a bare scalar body holding an identifier cannot be "
                                 "pseudonymised in place")
            return 0
        count = 0
        # An explicit stack, not recursion: a deeply nested body cannot crash the walk.
        stack: list[tuple[Any, _Where]] = [(body, _Where())]
        while stack:
            node, where = stack.pop()
            if isinstance(node, dict):
                slots = [(k, *_field(k.lower() if isinstance(k, str) else "", where))
                         for k in node]
            else:
                item = _Where(where.person, where.whole, None, where.address)
                slots = [(i, where.whole or where.items, where if isinstance(v, list) else item)
                         for i, v in enumerate(node)]
            for slot, kind, inner in slots:
                value = node[slot]
                if isinstance(value, dict | list):
                    stack.append((value, inner))
                    continue
                new, n = self._scalar(value, kind)
                if n:
                    node[slot] = new
                    count += n
            if isinstance(node, dict):
                count += self._rekey(node)
        return count

    def _rekey(self, node: dict[Any, Any]) -> int:
        """Object keys are text too: a map keyed by EAN must not leak its keys."""
        count = 0
        items: list[tuple[Any, Any]] = []
        for key, value in node.items():
            new, n = self._scalar(key, None)
            items.append((new, value))
            count += n
        if count:
            node.clear()
            for key, value in items:
                while key in node:  # two spellings of one identifier: keep both values
                    key = f"{key}_"
                node[key] = value
        return count


def _field(name: str, where: _Where) -> tuple[str | None, _Where]:
    """The identifier kind of a scalar under ``name`` and the context of a
    container under it."""
    if where.whole is not None:
        return where.whole, where
    if where.address and name not in _AREA:
        return "street", _Where(where.person, "street")
    is_person = name in _PERSONS or (name.endswith("s") and name[:-1] in _PERSONS)
    person = where.person or is_person
    if name in _ADDRESSES:
        return "address", _Where(person, None, "address", address=True)
    kind = _FIELDS.get(name)
    if kind is None and (is_person or (name == "name" and where.person)):
        # A person given as a bare value ("customer": "J. Peeters") or a
        # person's name: the value is who they are.
        return "name", _Where(person, "name" if name == "name" else None, "name")
    if kind in _WHOLE_VALUE:
        return kind, _Where(person, kind)
    return kind, _Where(person, None, kind)


def find_leaks(body: Any) -> list[str]:
    """Names of the leak patterns that still match anywhere in the serialised body."""
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    # JSON escapes (\" \\ \n \u0001) stand for characters no pattern uses;
    # neutralise them so "\u0000@x.be" does not read as an address "u0000@x.be".
    text = re.sub(r"\\(?:u[0-9a-fA-F]{4}|.)", "\x00", text)
    return [name for name, pattern in LEAK_PATTERNS.items() if pattern.search(text)]
