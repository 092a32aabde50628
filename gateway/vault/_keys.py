"""Key handling for the vault: master keys, key wrapping, AES-GCM details.

Private: only :mod:`gateway.vault._store` imports this module (STYLE.md,
"Safe layer over a hazardous one"); the rest of the gateway uses the verbs of
:class:`gateway.vault.Vault`.

Envelope encryption, two layers, both AES-256-GCM (``cryptography``):

* each secret *version* gets its own random 256-bit data key; the value is
  sealed under it with associated data ``(secret id, version)``;
* the data key is wrapped under a key derived from a versioned master key,
  again with AES-256-GCM and associated data ``(secret id, version, master
  version, created, kind, labels)``. We use GCM rather than AES-KW (RFC 3394)
  because AES-KW takes no associated data: with GCM a wrapped key cannot be
  moved to another id, version or master version, and the plaintext metadata
  of the row is authenticated too.

From each master key HKDF-SHA256 derives two independent keys: one wraps data
keys, one computes the *key check value* (an HMAC of a constant) that the
database stores so a wrong master key is detected at open. The master key
itself is never stored, logged or put in a ``repr``. (Python cannot wipe
memory; keys live as long as the objects that hold them.)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.vault._errors import VaultLocked, VaultTampered

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # the GCM nonce size NIST SP 800-38D recommends
TAG_BYTES = 16
_DOMAIN = b"gateway-vault/1/"
_ENTRY = re.compile(r"v([1-9][0-9]{0,8}):([A-Za-z0-9+/_-]+={0,2})")
_FORMAT = "v<N>:<base64 of 32 bytes>, separated by commas or newlines"


def _parse(text: str, source: str) -> MasterKeys:
    """Parse ``v1:BASE64[,v2:BASE64]`` (commas or newlines; ``#`` comments)."""
    lines = (line.split("#", 1)[0] for line in text.splitlines())
    entries = [e for line in lines for e in re.split(r"[,\s]+", line) if e]
    if not entries:
        raise VaultLocked(f"{source}: no master key found (expected {_FORMAT})")
    keys: dict[int, bytes] = {}
    for n, entry in enumerate(entries, 1):
        match = _ENTRY.fullmatch(entry)
        # SECURITY: messages name the entry's position or version, never its text.
        if match is None:
            raise VaultLocked(f"{source}: entry {n} is not of the form {_FORMAT}")
        version = int(match[1])
        try:
            key = base64.b64decode(match[2].replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raise VaultLocked(f"{source}: master key v{version} is not valid base64") from None
        if len(key) != KEY_BYTES:
            raise VaultLocked(f"{source}: master key v{version} is {len(key)} bytes, "
                              f"expected {KEY_BYTES}")
        if version in keys:
            raise VaultLocked(f"{source}: master key v{version} is listed twice")
        keys[version] = key
    return MasterKeys(keys)


@dataclass(frozen=True, eq=False)
class MasterKeys:
    """The master keys the operator supplies: the newest version wraps, all unwrap.

    The idea of ``MultiFernet``: add a version, ``Vault.rekey`` to it, then
    drop the old one from the key file.
    """

    keys: Mapping[int, bytes]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("MasterKeys needs at least one key")
        for version, key in self.keys.items():
            if not isinstance(version, int) or isinstance(version, bool) or version < 1:
                raise ValueError("master key versions are integers >= 1")
            if not isinstance(key, bytes) or len(key) != KEY_BYTES:
                raise ValueError(f"master key v{version} must be {KEY_BYTES} bytes")
        object.__setattr__(self, "keys", MappingProxyType(dict(sorted(self.keys.items()))))

    def __repr__(self) -> str:
        # SECURITY: versions only; key bytes never reach a log line or traceback.
        return f"MasterKeys(versions={sorted(self.keys)})"

    @classmethod
    def from_env(cls, var: str = "GATEWAY_VAULT_KEY") -> MasterKeys:
        text = os.environ.get(var, "")
        if not text.strip():
            raise VaultLocked(f"environment variable {var} is not set: the vault needs its "
                              f"master key ({_FORMAT})")
        return _parse(text, f"environment variable {var}")

    @classmethod
    def from_file(cls, path: Path) -> MasterKeys:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise VaultLocked(f"master key file {path} does not exist") from None
        except OSError as exc:
            raise VaultLocked(f"master key file {path} cannot be read: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as fh:
            # SECURITY: check the mode of the file we actually opened (no TOCTOU).
            mode = stat.S_IMODE(os.fstat(fh.fileno()).st_mode)
            if mode & 0o077:
                raise VaultLocked(f"master key file {path} has mode {mode:04o}; it must be "
                                  f"readable by its owner only (chmod 600 {path})")
            data = fh.read()
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise VaultLocked(f"master key file {path} is not ASCII ({_FORMAT})") from None
        return _parse(text, f"master key file {path}")

    @classmethod
    def generate(cls, version: int = 1) -> MasterKeys:
        return cls({version: secrets.token_bytes(KEY_BYTES)})

    def to_text(self) -> str:
        """One ``vN:BASE64`` per line; :meth:`from_file` and :meth:`from_env` read it."""
        return "".join(f"v{v}:{base64.b64encode(k).decode()}\n" for v, k in self.keys.items())

    def with_new_version(self) -> MasterKeys:
        return MasterKeys({**self.keys, self.current_version + 1: secrets.token_bytes(KEY_BYTES)})

    @property
    def current_version(self) -> int:
        return max(self.keys)


def agree(a: MasterKeys, b: MasterKeys) -> bool:
    """Whether every version in both has the same key in both (constant time)."""
    return all(hmac.compare_digest(a.keys[v], b.keys[v]) for v in a.keys.keys() & b.keys.keys())


def _derive(master: bytes, purpose: bytes, version: int) -> bytes:
    info = _DOMAIN + purpose + b"/" + str(version).encode()
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(master)


def _associated_data(purpose: str, *parts: str | int) -> bytes:
    """An unambiguous encoding of the fields a ciphertext is bound to."""
    out = bytearray(_DOMAIN + purpose.encode())
    for part in parts:
        raw = part.to_bytes(8, "big") if isinstance(part, int) else part.encode()
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """``nonce || ciphertext || tag``. A random nonce is safe: each key seals once
    (data keys) or few times (wrapping keys, far below the 2**32 GCM limit)."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _unseal(key: bytes, blob: object, aad: bytes) -> bytes:
    """Inverse of :func:`_seal`; raises ``InvalidTag`` on any alteration."""
    if not isinstance(blob, bytes) or len(blob) < NONCE_BYTES + TAG_BYTES:
        raise InvalidTag
    return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)


class Record(Protocol):
    """A stored row (or the dict that becomes one): the fields keys are bound to."""

    def __getitem__(self, key: str, /) -> Any: ...


def _where(record: Record) -> str:
    return f"secret {record['secret_id']!r} version {record['version']}"


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=8 * KEY_BYTES)


def seal_value(data_key: bytes, record: Record, value: bytes) -> bytes:
    aad = _associated_data("value", record["secret_id"], record["version"])
    return _seal(data_key, value, aad)


def open_value(data_key: bytes, record: Record) -> bytes:
    aad = _associated_data("value", record["secret_id"], record["version"])
    try:
        return _unseal(data_key, record["ciphertext"], aad)
    except InvalidTag:
        raise VaultTampered(f"{_where(record)}: value failed authentication "
                            "(record altered, moved or swapped)") from None


class Keyring:
    """Keys derived from :class:`MasterKeys`: the newest version wraps, all unwrap."""

    def __init__(self, master: MasterKeys) -> None:
        self.current_version = master.current_version
        self.versions = frozenset(master.keys)
        self._wrap = {v: _derive(k, b"wrap", v) for v, k in master.keys.items()}
        self._check = {v: _derive(k, b"check", v) for v, k in master.keys.items()}

    def __repr__(self) -> str:
        return f"Keyring(versions={sorted(self.versions)})"

    def check_value(self, version: int) -> bytes:
        """The key check value of ``version``: safe to store, reveals nothing of the key."""
        return hmac.new(self._check[version], _DOMAIN + b"key-check-value",
                        hashlib.sha256).digest()

    def matches(self, version: int, stored: bytes) -> bool:
        return hmac.compare_digest(self.check_value(version), stored)

    @staticmethod
    def _aad(record: Record, master_version: int) -> bytes:
        # The wrapped key is bound to where it sits and to the row's metadata.
        return _associated_data("data-key", record["secret_id"], record["version"],
                                master_version, record["created"], record["kind"],
                                record["labels"])

    def wrap(self, data_key: bytes, record: Record) -> bytes:
        """Wrap under the current master version (store it as the row's master_version)."""
        aad = self._aad(record, self.current_version)
        return _seal(self._wrap[self.current_version], data_key, aad)

    def unwrap(self, record: Record) -> bytes:
        """The record's data key; authenticates the record's metadata on the way."""
        version = record["master_version"]
        if version not in self._wrap:
            raise VaultLocked(f"{_where(record)} needs master key v{version}, "
                              "which is not loaded")
        try:
            return _unseal(self._wrap[version], record["wrapped_key"], self._aad(record, version))
        except InvalidTag:
            raise VaultTampered(f"{_where(record)}: wrapped data key failed authentication "
                                "(record altered, moved or swapped)") from None
