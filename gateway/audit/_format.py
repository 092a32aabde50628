"""The audit log's line format (``docs/audit-format.md``), pure: canonical
encoding, the hash chain, checkpoint messages, parsing, and the checkpoint
signing key. The writer is :mod:`gateway.audit._chain`, the verifier
:mod:`gateway.audit._verify`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

__all__ = ["ALG", "CHECKPOINT", "GENESIS", "KEY_CHANGE_EVENT", "KEY_FILE", "KID_RE",
           "PRUNE_EVENT", "RESERVED",
           "SIGNING_CONTEXT", "ChainLine", "audit_kid", "b64url", "canonical",
           "checkpoint_message", "line_hash", "load_or_create_audit_key", "parse_line",
           "public_key_document", "public_keys", "seal", "segment_files", "segment_name",
           "segments_dir", "unb64url"]

GENESIS = "0" * 64
ALG = "EdDSA"
CHECKPOINT = "checkpoint"
KEY_FILE = "audit-signing-key.pem"
SIGNING_CONTEXT = b"gateway-audit-checkpoint/v1"
PRUNE_EVENT = "audit-prune"  # written before sealed segments are deleted (§10)
KEY_CHANGE_EVENT = "audit-key-change"  # the old key signs the handover to the new (§6)
SEGMENT_NAME = re.compile(r"([0-9]{12})-([0-9]{12})\.jsonl")
RESERVED = frozenset({"seq", "prev", "hash", "type"})  # set by the log; refused in events
KID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SEALED = re.compile(rb'(\{.*),"hash":"([0-9a-f]{64})"\}', re.S)
_HEX64 = re.compile(r"[0-9a-f]{64}")


# -- the format (pure) ---------------------------------------------------------
# json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
# allow_nan=False), with the encoder built once (it is stateless between calls).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False)


def canonical(fields: Mapping[str, Any]) -> bytes:
    """Sorted keys, no whitespace, raw UTF-8; NaN/Infinity refused (not JSON)."""
    return _CANONICAL.encode(fields).encode("utf-8")


def canonical_request(fields: Mapping[str, Any]) -> bytes:
    """:func:`canonical` of a request event's line (strings, integers, None,
    a list of strings, and the float ``ts``) by orjson, at a tenth of the
    cost (it is written for every data-plane request). The same rules (§3):
    no whitespace, raw UTF-8, the same escapes, and sorted keys, which
    ``fields`` already are (``RequestEvent.chain_fields`` inserts them in
    order; orjson's own sort was half of this call); for these members the
    same bytes (tests/audit/test_canonical.py), and a verifier hashes the
    stored bytes anyway. orjson would write a NaN as ``null``, so the one
    float is checked here."""
    if not math.isfinite(fields["ts"]):
        raise ValueError("ts is not a finite number")
    return orjson.dumps(fields)


def line_hash(prev: str, body: bytes) -> str:
    return hashlib.sha256(prev.encode("ascii") + b"\n" + body).hexdigest()


def seal(body: bytes, digest: str) -> bytes:
    """The stored line: the body with ``"hash"`` appended as its last member."""
    return body[:-1] + b',"hash":"' + digest.encode("ascii") + b'"}\n'


def checkpoint_message(seq: int, prev: str, kid: str) -> bytes:
    """What a checkpoint signs: its own seq, the seq and hash of the line it
    closes over, and the kid (binding the signature to the key it names)."""
    return "\n".join([SIGNING_CONTEXT.decode(), str(seq), str(seq - 1), prev, kid]).encode()


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    """Strict base64url without padding (RFC 4648 §5, §3.2): the URL-safe
    alphabet only, no ``=``, no non-zero bits past the last byte. Anything
    else is a ``ValueError``: a second spelling of the same bytes is not
    accepted, so every verifier reads one signature one way (§2)."""
    # One guard covers every other spelling: whatever a lenient decoder reads
    # (padding, "+" or "/", stray characters, bits past the last byte), only
    # the text that re-encodes to itself is accepted.
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError as exc:  # binascii.Error: an impossible length
        raise ValueError("not unpadded base64url") from exc
    if b64url(raw) != text:
        raise ValueError("not the one unpadded base64url spelling of its bytes")
    return raw


# -- keys ------------------------------------------------------------------------
def audit_kid(public: Ed25519PublicKey) -> str:
    return "audit-" + hashlib.sha256(public.public_bytes_raw()).hexdigest()[:16]


def load_or_create_audit_key(directory: Path) -> tuple[Ed25519PrivateKey, str]:
    """The checkpoint key in ``directory/audit-signing-key.pem`` (PKCS#8, 0600)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / KEY_FILE
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        tmp = directory / f".{KEY_FILE}.{os.urandom(6).hex()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # SECURITY: never 0644
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if a concurrent start won: then use its key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ValueError(f"{path}: audit signing key has mode {mode:04o}; "
                         "it must not be readable by group or others (chmod 600)")
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: audit signing key is not Ed25519")
    return key, audit_kid(key.public_key())


def public_key_document(key: Ed25519PrivateKey, kid: str) -> dict[str, Any]:
    x = b64url(key.public_key().public_bytes_raw())
    return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": ALG,
                      "use": "sig"}]}


def public_keys(given: Mapping[str, Any]) -> dict[str, Ed25519PublicKey]:
    """The trusted keys by kid, from a JWKS-like document (§6) or a mapping.

    SECURITY: each kid must be the one its key derives (§6): a document that
    files a key under another key's kid is refused (``ValueError``) rather than
    trusted, so a kid in a checkpoint names exactly one key."""
    entries = given.get("keys")
    if not isinstance(entries, list):
        if not all(isinstance(k, Ed25519PublicKey) for k in given.values()):
            raise TypeError("public_keys: expected {kid: Ed25519PublicKey} or a JWKS document")
        out = dict(given)
    else:
        out = {str(jwk.get("kid")): Ed25519PublicKey.from_public_bytes(unb64url(jwk["x"]))
               for jwk in entries if isinstance(jwk, dict)
               and (jwk.get("kty"), jwk.get("crv")) == ("OKP", "Ed25519")}
    for kid, key in out.items():
        if audit_kid(key) != kid:
            raise ValueError(f"audit key document: kid {kid!r} does not match its key "
                             f"(its kid is {audit_kid(key)!r})")
    return out


@dataclass(frozen=True)
class ChainLine:
    seq: int
    prev: str
    hash: str
    computed: str
    fields: dict[str, Any]


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259 §6)")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len(out := dict(pairs)) != len(pairs):
        raise ValueError("duplicate key")
    return out


def parse_line(raw: bytes) -> ChainLine | str:
    """A line without its newline, or why it is malformed."""
    if (m := _SEALED.fullmatch(raw)) is None:
        return 'not a JSON object ending in "hash"'
    body = m.group(1) + b"}"
    try:
        fields = json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicates,
                            parse_constant=_no_constants)
    except ValueError:
        return "not valid UTF-8 JSON (or NaN, Infinity, a duplicate key)"
    if not isinstance(fields, dict) or "hash" in fields:
        return "not a JSON object with one hash"
    seq, prev = fields.get("seq"), fields.get("prev")
    if type(seq) is not int or not isinstance(prev, str) or not _HEX64.fullmatch(prev):
        return "seq or prev missing or malformed"
    return ChainLine(seq, prev, m.group(2).decode(), line_hash(prev, body), fields)


# -- segments (§10) --------------------------------------------------------------
def segments_dir(log: Path) -> Path:
    """Where the sealed segments of the log at ``log`` live: ``audit.segments/``
    beside ``audit.jsonl``."""
    return log.with_name(log.stem + ".segments")


def segment_name(first_seq: int, last_seq: int) -> str:
    return f"{first_seq:012d}-{last_seq:012d}.jsonl"


def segment_files(directory: Path) -> list[Path]:
    """The sealed segments, oldest first (names sort by their first seq)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if SEGMENT_NAME.fullmatch(p.name))

