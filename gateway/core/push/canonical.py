"""The per-record form's canonical bytes (D1 idempotency): the fingerprint
of a batch (SHA-256 of its canonical JSON, independent of the posted text's
key order and spacing) and a tenant's part as one JSON array, both written
by orjson where its bytes are provably the standard library's. The typed
fast path (:mod:`.readings`) writes the same bytes from its structs. And a
columnar part (:func:`encode_days`): its meter-days' texts as one array."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from gateway.core.native import native as _native

_FP_CHUNK = 4096


def fingerprint_digest(batch_id: str) -> hashlib._Hash:
    """A fingerprint's SHA-256 fed up to its records: the canonical document's
    head ``{"batch_id":...,"records":[``. The caller adds the records' bytes
    (comma-separated, no brackets) and ``]}``."""
    return hashlib.sha256(f'{{"batch_id":{json.dumps(batch_id)},"records":['.encode())


def batch_fingerprint(batch_id: str, records: Sequence[Mapping[str, Any]],
                      posted: bytes | None = None) -> str:
    """SHA-256 (hex) of the canonical JSON ``{"batch_id": ..., "records": [...]}``:
    keys sorted, no whitespace, ASCII escapes. Independent of the posted text's
    key order and spacing; any change of a value, of a number's type (``1`` vs
    ``1.0``) or of the records' order changes it. Encoded in chunks so a large
    batch is never one string in memory.

    Given ``posted``, the body the records were parsed from, orjson encodes
    them where its bytes are provably the standard library's (about a tenth
    of the cost, :func:`_orjson_digest`); the fingerprint is the same either
    way (tests/core/push/test_fingerprint.py)."""
    if posted is not None:
        fast = _orjson_digest(batch_id, records, posted)
        if fast is not None:
            return fast
    digest = fingerprint_digest(batch_id)
    dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode
    for start in range(0, len(records), _FP_CHUNK):
        if start:
            digest.update(b",")
        digest.update(dumps(list(records[start:start + _FP_CHUNK]))[1:-1].encode())
    digest.update(b"]}")
    return digest.hexdigest()


def encode_days(texts: Sequence[str]) -> bytes:
    """A tenant's part of a columnar batch: its meter-days' texts (JSON
    already) as one JSON array, the bytes of ``("[" + ",".join(texts) +
    "]").encode()``, written once by the C module where it is built and
    every text is ASCII (a part is megabytes: the join, the brackets and
    the encoding each copied it)."""
    if _native is not None and type(texts) in (list, tuple):
        out: bytes | None = _native.join_texts(texts)
        if out is not None:
            return out
    return ("[" + ",".join(texts) + "]").encode()


def encode_routed(records: Sequence[Mapping[str, Any]]) -> bytes:
    """A tenant's part of a routed batch as one JSON array, the bytes of
    ``json.dumps(list(records), separators=(",", ":"))``: by orjson where
    they are provably the same (see :func:`_orjson_digest`; a routed record's
    value is a finite number, :func:`route_batch` quarantines any other)."""
    try:
        out = orjson.dumps(list(records))
    except orjson.JSONEncodeError:  # an integer past 64 bits
        pass
    else:
        if _same_as_json(out):
            return out
    return json.dumps(list(records), separators=(",", ":")).encode()


def _same_as_json(out: bytes) -> bool:
    """orjson's output holds nothing the standard library writes otherwise:
    no byte past ASCII, no DEL, no float under 1e-4 (``e-``, ``0.0000``)."""
    return out.isascii() and b"\x7f" not in out and b"e-" not in out and b"0.0000" not in out


# Digits to "0", an exponent's letter to "e", what a number may follow to "|",
# every other byte to a space: "0e" is a number with an exponent.
_POSTED_NUMBERS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x65 if b in b"eE"
                        else 0x7C if b in b"[:,- \t\n\r" else 0x20 for b in range(256))
_LONG_RUN = b"0" * 19  # a run of digits that may be past 64 bits
_LONG_NUMBER = b"|" + _LONG_RUN


def _orjson_digest(batch_id: str, records: Sequence[Mapping[str, Any]],
                   posted: bytes) -> str | None:
    """The fingerprint by orjson (``OPT_SORT_KEYS``), or None where its bytes
    might differ from ``json.dumps(sort_keys=True, separators=(",", ":"))``'s.
    They are the same for strings of printable ASCII and the control escapes,
    integers within 64 bits, ``true``/``false``/``null`` and finite floats of
    magnitude 1e-4 or more (the two write a smaller one differently). So:

    - the posted text has no ``NaN`` or ``Infinity`` (orjson writes ``null``),
      no exponent and no run of 19 digits (the only ways to a float that
      overflows, and to an integer past 64 bits, which orjson refuses);
    - the output is ASCII without DEL (the standard library escapes both)
      and has no ``e-`` or ``0.0000`` (how either writes a float under 1e-4;
      in a string it only costs this path)."""
    if b"NaN" in posted or b"Infinity" in posted:
        return None
    numbers = posted.translate(_POSTED_NUMBERS)
    if b"0e" in numbers or _LONG_NUMBER in numbers or numbers.startswith(_LONG_RUN):
        return None
    digest = fingerprint_digest(batch_id)
    for start in range(0, len(records), _FP_CHUNK):
        try:
            out = orjson.dumps(list(records[start:start + _FP_CHUNK]),
                               option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            return None
        if not _same_as_json(out):
            return None
        if start:
            digest.update(b",")
        digest.update(memoryview(out)[1:-1])  # not copied
    digest.update(b"]}")
    return digest.hexdigest()
